"""How a node process starts, spins and ends (shared by depth_node and depth_lifecycle_node).

Ctrl-C reaches a node under ``ros2 launch`` twice (the terminal's process group and launch's
forwarded SIGINT). The first SIGINT / SIGTERM stops the node (KeyboardInterrupt; rclpy's own
handler also shuts the context down, which ends spin); later ones are ignored, so they cannot
interrupt the shutdown with a traceback.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException


class QuietSignals:
    """Installed before rclpy.init, whose handlers chain to these."""

    def __init__(self):
        self.count = 0
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1:
            raise KeyboardInterrupt

    def stopping(self) -> None:
        """From here on every signal is ignored (the node is shutting down anyway)."""
        self.count = max(self.count, 1)


def run_node(name: str, create: Callable, bring_up: Callable, close: Callable,
             args=None, fast_exit: bool = True) -> int:
    """rclpy.init -> node = create() -> bring_up(node) -> spin -> close(node) -> exit code.

    An exception from create / bring_up (bad parameters, a model that cannot be loaded) is one
    clear 'cannot start' line and exit code 1; Ctrl-C is exit code 0."""
    signals = QuietSignals()
    try:
        rclpy.init(args=args)
    except KeyboardInterrupt:
        return 0
    node = None
    code = 0
    try:
        node = create()
        bring_up(node)
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:
        message = str(exc) or repr(exc)
        if node is not None:
            node.get_logger().fatal(f'cannot start: {message}')
        else:
            print(f'[{name}] cannot start: {message}', file=sys.stderr)
        code = 1
    finally:
        signals.stopping()
        if node is not None:
            close(node)
            node.destroy_node()
        rclpy.try_shutdown()
    if fast_exit:
        # Everything is closed; skip interpreter teardown, which takes about a second with
        # torch and diffusers loaded, so that Ctrl-C ends the node promptly.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
