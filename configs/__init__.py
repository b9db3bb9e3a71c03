"""The alignment configs that ship with robust-w2s (installed as ``robust_w2s.configs``):
``embedded/<method>.yaml`` (the reference study's runs on the embedded world) and
``paper/adv-w2s.yaml`` (the paper's setting). Each file holds only what differs from the defaults
of :mod:`robust_w2s.align.config`."""
