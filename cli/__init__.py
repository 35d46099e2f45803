"""Command-line tools: ``qkmsctl`` and the ``qkmsd`` entry point.  Never imports ``qkmsd``
except through ``cli.qkmsd_main``, the daemon's own entry point."""
