"""Rollout allocation: how many rollouts each prompt of a batch gets (E3 Alg. 1 and the plug-in policies)."""
