"""KV-cache sampler, policy log-probs/entropy, prompt perplexity and the clipped PG loss of the local engine."""

import math

import numpy as np
import pytest
import torch

from e3.engines.local.policy_loss import clipped_pg_loss
from e3.engines.local.sampling import prompt_perplexity, response_logprobs, response_mask, sample
from e3.tasks.model import build_model
from e3.tasks.vocab import CharTokenizer

TOK = CharTokenizer()
WIDTH, MAX_NEW = 7, 5


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    m = build_model({"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
                    TOK.vocab_size, WIDTH + MAX_NEW, seed=3)
    with torch.no_grad():  # larger logits than the init so the sampler sees a peaked, varied distribution
        for p in m.parameters():
            p.mul_(4.0)
    return m.eval()


def prompts(n=6):
    return torch.from_numpy(TOK.left_pad(["3+4=", "12-34=", "99*9=", "5+5=", "10-1=", "7*8="][:n], WIDTH))


def test_response_mask_covers_up_to_first_eos():
    e, p = TOK.eos_id, TOK.pad_id
    toks = torch.tensor([[5, 6, e, p, p], [5, 5, 5, 5, 5], [e, p, p, p, p]])
    assert response_mask(toks, e).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_greedy_kv_cache_decoding_equals_full_recomputation(model):
    x = prompts()
    toks, mask = sample(model, x, MAX_NEW, 1.0, TOK.eos_id, TOK.pad_id, greedy=True)
    seq = x.clone()
    with torch.no_grad():
        for t in range(MAX_NEW):
            nxt = model(input_ids=seq).logits[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    ref = seq[:, WIDTH:]
    # compare up to and including each row's first eos (the sampler pads after it)
    assert torch.equal(torch.where(mask.bool(), toks, -1), torch.where(mask.bool(), ref, -1))
    assert torch.all(toks[~mask.bool()] == TOK.pad_id)


def test_sampling_is_reproducible_with_a_seeded_generator(model):
    x = prompts().repeat(20, 1)
    a, _ = sample(model, x, MAX_NEW, 1.0, TOK.eos_id, TOK.pad_id, generator=torch.Generator().manual_seed(7))
    b, _ = sample(model, x, MAX_NEW, 1.0, TOK.eos_id, TOK.pad_id, generator=torch.Generator().manual_seed(7))
    c, _ = sample(model, x, MAX_NEW, 1.0, TOK.eos_id, TOK.pad_id, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_low_temperature_approaches_greedy_and_high_temperature_spreads(model):
    x = prompts().repeat(50, 1)
    g = torch.Generator().manual_seed(0)
    greedy, _ = sample(model, x, 1, 1.0, TOK.eos_id, TOK.pad_id, greedy=True)
    cold, _ = sample(model, x, 1, 0.01, TOK.eos_id, TOK.pad_id, generator=g)
    hot, _ = sample(model, x, 1, 5.0, TOK.eos_id, TOK.pad_id, generator=g)
    assert (cold == greedy).float().mean() > 0.99
    assert len(torch.unique(hot)) > len(torch.unique(cold))
    with pytest.raises(ValueError, match="temperature"):
        sample(model, x, 1, 0.0, TOK.eos_id, TOK.pad_id)


def test_first_token_frequencies_follow_the_tempered_policy(model):
    """Sampled first tokens match softmax(logits / tau) (chi-square-free check: total variation < 0.03)."""
    tau, n = 1.5, 20000
    x = prompts(1).repeat(n, 1)
    toks, _ = sample(model, x, 1, tau, TOK.eos_id, TOK.pad_id, generator=torch.Generator().manual_seed(1))
    emp = np.bincount(toks[:, 0].numpy(), minlength=TOK.vocab_size) / n
    with torch.no_grad():
        p = torch.softmax(model(input_ids=x[:1]).logits[0, -1] / tau, -1).numpy()
    assert 0.5 * np.abs(emp - p).sum() < 0.03


def test_response_logprobs_and_entropy_match_the_sampling_distribution(model):
    x = prompts()
    tau = 0.7
    toks, mask = sample(model, x, MAX_NEW, tau, TOK.eos_id, TOK.pad_id, generator=torch.Generator().manual_seed(2))
    logp, ent = response_logprobs(model, x, toks, tau)
    assert logp.shape == ent.shape == toks.shape and logp.requires_grad and not ent.requires_grad
    with torch.no_grad():  # position 0: distribution right after the prompt
        dist = torch.log_softmax(model(input_ids=x).logits[:, -1] / tau, -1)
    assert torch.allclose(logp[:, 0].detach(), dist.gather(1, toks[:, :1]).squeeze(1), atol=1e-5)
    assert torch.allclose(ent[:, 0], -(dist.exp() * dist).sum(-1), atol=1e-5)
    assert torch.all(ent >= 0) and torch.all(ent <= math.log(TOK.vocab_size) + 1e-4)
    # a hotter policy has higher entropy on the same tokens
    _, ent_hot = response_logprobs(model, x, toks, 2.0)
    assert ent_hot[:, 0].mean() > ent[:, 0].mean()


def test_prompt_perplexity_matches_a_manual_computation(model):
    x = prompts()
    ppl = prompt_perplexity(model, x, TOK.pad_id)
    with torch.no_grad():
        logits = model(input_ids=x).logits
    for i in range(len(x)):
        nll = []
        for t in range(1, WIDTH):
            if x[i, t] != TOK.pad_id:
                nll.append(-torch.log_softmax(logits[i, t - 1], -1)[x[i, t]].item())
        assert ppl[i] == pytest.approx(math.exp(np.mean(nll)), rel=1e-4)


def test_pg_loss_gradient_is_advantage_weighted_score_function_on_policy():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, stats = clipped_pg_loss(logp, logp.detach(), adv, mask, 0.2)
    loss.backward()
    # ratio = 1: d loss / d logp_it = -A_i * m_it / sum(m)
    expected = -(adv[:, None] * mask) / mask.sum()
    assert torch.allclose(logp.grad, expected)
    assert stats["actor/clip_fraction"] == 0.0 and stats["actor/approx_kl"] == 0.0


def test_pg_loss_clips_the_ratio():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]])).requires_grad_(True)
    loss, stats = clipped_pg_loss(new, old, torch.tensor([1.0]), torch.ones(1, 3), 0.2)
    loss.backward()
    # A > 0: ratio 1.5 is clipped (no gradient), 0.5 and 1.1 are not (gradient -ratio / 3)
    assert new.grad[0, 0] == 0.0
    assert torch.allclose(new.grad[0, 1:], torch.tensor([-0.5 / 3, -1.1 / 3]))
    assert stats["actor/clip_fraction"] == pytest.approx(2 / 3)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 + 1.1) / 3)
