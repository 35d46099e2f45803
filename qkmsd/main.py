"""``qkmsd``: the node daemon's entry point, where errors become exit statuses.

Exit status: 0 after a clean shutdown, 2 for an invalid configuration, 1 when
the node cannot start (the message says what to fix): each error's ``exit_code``.

SIGHUP reloads the node's TLS files (``Node.reload``): the CA, certificate, key and CRL.
A reload that fails is logged and changes nothing; the node carries on.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
from pathlib import Path

import trio

from ._exc import collapse
from .app import VERSION, Node
from .config import Config, ConfigError, load_config
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, QkmsError, StartupError
from .keystore import KeyStoreError, MasterKeyError, generate_master_key, rotate_master_key
from .log import configure, get_logger
from .systemd import Notifier

log = get_logger("qkms.main")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qkmsd", description="qkms node daemon")
    parser.add_argument(
        "command",
        nargs="?",
        choices=["rotate-master"],
        help="rotate-master: re-encrypt the stopped node's key store under a new master key"
        " (needs --config, with [node] master_key_file) and exit",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", "-c", help="node config file (TOML)")
    what.add_argument(
        "--generate-master-key",
        metavar="FILE",
        help="write a new random master key to FILE (mode 0600; never overwrites) and exit",
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the config and exit (0 valid, 2 invalid)"
    )
    parser.add_argument("--version", action="version", version=f"qkmsd {VERSION}")
    return parser


async def serve(config: Config, notifier: Notifier) -> None:
    """Run the node until SIGTERM or SIGINT, then stop it within the grace period.

    SIGHUP reloads the TLS files meanwhile.
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            node = Node(config, notifier=notifier)
            await nursery.start(node.run)
            # What starting built (modules, config, TLS contexts) lives as long as the
            # process: keep it out of the collector's full passes, which otherwise walk it
            # all while every request in flight waits.
            gc.freeze()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    try:
                        node.reload()
                    except QkmsError as exc:
                        log.error("node.reload_failed", error=str(exc))
                    continue
                log.info("node.stopping", signal=signal.Signals(signum).name)
                notifier.notify("STOPPING=1")
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.generate_master_key:
        try:
            generate_master_key(Path(args.generate_master_key))
        except MasterKeyError as exc:
            return _fail(exc)
        except OSError as exc:
            print(f"qkmsd: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"master key written to {args.generate_master_key} (mode 0600)")
        return EXIT_OK
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(exc)
    if args.check:
        print(f"config {config.source}: ok (node {config.node_id}, {len(config.links)} link(s))")
        return EXIT_OK
    if args.command == "rotate-master":
        return _rotate_master(config)
    configure(config.log.level, config.log.format, node_id=config.node_id)
    try:
        trio.run(serve, config, Notifier())
    except BaseException as raw:
        cause = collapse(raw)
        if isinstance(cause, StartupError):
            return _fail(cause)
        if isinstance(cause, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        raise
    return EXIT_OK


def _rotate_master(config: Config) -> int:
    """``qkmsd rotate-master``: see ``qkmsd.keystore.rotate_master_key``."""
    if config.master_key_file is None:
        print(
            f"qkmsd: config {config.source}: [node] master_key_file is not set: the master key"
            " comes from a systemd credential, which qkmsd cannot rewrite; set master_key_file"
            " to the credential's source file for the rotation",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if not config.keystore_path.exists():
        print(f"qkmsd: key store {config.keystore_path}: not found", file=sys.stderr)
        return EXIT_FAILURE
    try:
        done = rotate_master_key(config.keystore_path, config.master_key_file)
    except (MasterKeyError, KeyStoreError) as exc:
        return _fail(exc)
    except OSError as exc:
        print(f"qkmsd: master key {config.master_key_file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    if done.recovered:
        print("an interrupted earlier rotation was finished first")
    print(
        f"key store {config.keystore_path}: re-encrypted {done.blocks} block(s) and"
        f" {done.service_keys} service key(s) under a new master key, now in"
        f" {config.master_key_file}"
    )
    return EXIT_OK


def _fail(exc: QkmsError) -> int:
    """The operator's one line on stderr, and the exit status of ``exc``'s kind."""
    print(f"qkmsd: {exc}", file=sys.stderr)
    return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
