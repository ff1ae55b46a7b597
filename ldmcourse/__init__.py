"""ldmcourse: latent diffusion from the ground up.

Modules, in the order the course builds them:
``profiles`` (how big each experiment is), ``data``, ``train`` (the ``fit`` loop), ``checkpoint``,
``autoencoders`` (AE, VAE, NVAE, KL autoencoder), ``schedules``, ``unet``, ``diffusion``,
``samplers``, ``sde``, ``latent``, ``inpaint``, ``metrics``, ``cli``; text conditioning: ``captions``,
``text`` (tokenizer, encoder), ``dit`` (diffusion transformer), ``text_ldm`` (wiring).
"""

__version__ = "0.1.0"
