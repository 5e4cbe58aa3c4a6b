"""What the families' torch code shares: the :class:`~bbx.nn.backbone.Backbone` contract and the
blocks and fused inference kernels in :mod:`bbx.nn.layers`."""
