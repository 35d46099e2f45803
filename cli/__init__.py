"""Command-line tools: ``qkmsctl``.  Never imports ``qkmsd``: it reaches a daemon only
through its admin socket (the ``qkmsd`` command is ``qkmsd.main:main``)."""
