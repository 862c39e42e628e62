"""Integrations with training frameworks: PyTorch (``pytorch``), Hugging Face datasets (``hf``),
OLMo-core (``olmo_core``), torchtitan (``torchtitan``), the Hugging Face ``Trainer``
(``hf_trainer``) and Lightning (``lightning``).

Each imports its framework lazily and says how to install it when it is missing; the core of
mixplane never imports them.
"""
