"""Score every prompt's perplexity under a model, for the PREPO offline curriculum (arXiv 2511.00794, sec. 3.1).

    python data/score_perplexity.py --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B \
        --input ~/data/e3/train.parquet --output ~/data/e3/train_ppl.parquet

P(x) = exp(-1/T sum_t log pi(x_t | x_<t)) over the prompt's tokens, the prompt rendered with the model's chat
template as verl's agent loop renders it (generation prompt included). The score goes to ``extra_info.perplexity``;
train on the output with ``e3.curriculum.enable=true e3.curriculum.mode=offline data.train_files=<output>``.
Rows are validated before and after; the output is written atomically.
"""

from __future__ import annotations

import argparse
import math

import torch

from e3.data import check_file, write_rows
from e3.io import run_cli


def prompt_ids(tokenizer, messages) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    else:
        ids = tokenizer("\n".join(m["content"] for m in messages))["input_ids"]
    return [int(i) for i in ids]


@torch.no_grad()
def perplexities(model, sequences: list[list[int]], batch_size: int, device: str, pad_id: int) -> list[float]:
    """exp(mean token NLL) of each sequence (its first token has no prediction and is not scored)."""
    out = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        valid = mask[:, 1:].float()
        nll = -(logp * valid).sum(1) / valid.sum(1).clamp(min=1)
        out.extend(math.exp(v) for v in nll.tolist())
    return out


def main(argv=None) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="hub id or local directory (the policy's base model)")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    args = ap.parse_args(argv)

    rows = check_file(args.input)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    seqs = [prompt_ids(tokenizer, r["prompt"]) for r in rows]
    scores = perplexities(model, seqs, args.batch_size, args.device, pad)
    rows = [{**r, "extra_info": {**r["extra_info"], "perplexity": float(p)}} for r, p in zip(rows, scores)]
    path = write_rows(rows, args.output)
    print(f"wrote {len(rows)} rows with extra_info.perplexity to {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
