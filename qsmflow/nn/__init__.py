"""Resolution-conditioned QSM networks: Meta-QSM (WP-Conv U-Net), Mesa-QSM, QSMInvNet.

- :mod:`.layers` — WP-Conv (voxel size → kernel), gated convolution, non-local block;
- :mod:`.models` — the three networks and :func:`~.models.build_model`;
- :mod:`.synthesis` — training data synthesised on the fly (COSMOS / head phantom bases);
- :mod:`.training` — the training loop behind ``qsmflow train --config FILE``;
- :mod:`.inference` — ``metaqsm`` / ``mesaqsm`` / ``qsminvnet`` with the inversion signature;
- ``configs/`` — full (paper-size) and reduced (CPU) training configs; ``weights/`` — shipped
  checkpoints with model cards.

Import torch lazily: ``import qsmflow.nn`` itself loads nothing heavy.
"""
