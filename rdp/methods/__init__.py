"""The built-in methods, registered with ``rdp.api.register`` on import: ``rdp`` (``rdp.methods.rdp``: latent
plans decoded by the asymmetric tokenizer's GRU, reading touch every step) and ``dp`` (``rdp.methods.dp``: the
Diffusion Policy baseline, action plans executed open-loop). A new method is a module here that defines a
``rdp.api.Method`` subclass (its decoder, plan codec, checkpoint parts, config check and training target) and is
imported below; ``configs/policy/<name>.yaml`` names it under ``method:``."""

from rdp.methods import dp, rdp

__all__ = ["dp", "rdp"]
