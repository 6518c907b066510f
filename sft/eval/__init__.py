"""Evaluation of trained models: HumanEval and MBPP pass@1, greedy, executed in the sandbox."""
