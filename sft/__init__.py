"""Supervised fine-tuning on the pipeline's final dataset, and evaluation of the result.

`python -m sft train --config RECIPE.yaml` trains (also under torchrun);
`python -m sft evaluate ...` scores a model on HumanEval and MBPP in the sandbox;
`python -m sft compare ...` tabulates results of several models.
"""
