"""E3 and PREPO for GRPO on verl 0.9.1.

E3: Liao et al., "Enhancing Efficiency and Exploration in Reinforcement Learning for LLMs", EMNLP 2025
(arXiv 2505.18573) — difficulty-aware rollout budgets (Alg. 1) and an entropy-targeting temperature
scheduler with annealing (Eq. 4-5).
PREPO: Sun et al., "Efficient Reinforcement Learning for Large Language Models with Intrinsic Exploration"
(arXiv 2511.00794) — a perplexity-paced prompt curriculum and relative-entropy rollout weights.

The algorithm modules (allocation, temperature, curriculum, weighting, advantage, reward, metrics, config,
controller) are pure Python/numpy and never import verl; the engines under ``e3.engines`` carry their
decisions.
"""

__version__ = "0.1.0"
