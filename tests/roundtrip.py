"""State round trips shared by the controller tests: what a checkpoint does to a state_dict."""

import io
import pickle

import torch


def pickle_roundtrip(state):
    return pickle.loads(pickle.dumps(state))


def torch_roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)
