"""The depth node as a lifecycle (managed) node, for stacks that bring nodes up with a lifecycle
manager (Navigation 2's lifecycle_manager, or ``ros2 lifecycle set``).

    unconfigured --configure--> inactive: parameters validated, the model loaded (GPU memory
                                           taken now, not on the first frame)
    inactive     --activate---> active:   subscriptions, publishers, diagnostics and the
                                           inference worker start: depth is published
    active       --deactivate-> inactive: the worker stops and every subscription, publisher
                                           and timer of the active state is destroyed
    inactive     --cleanup----> unconfigured: the model is released (CUDA cache emptied)

It is the same :class:`~fiffdepth_ros.ros.depth_node.DepthNode` (one class, cooperative
inheritance with rclpy's LifecycleNode): what ``start`` creates is what activation creates.
Run it as ``depth_lifecycle_node`` or with the launch file's ``managed:=true``.
"""
from __future__ import annotations

import gc
import sys
import threading

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from .. import params as P
from ..model.runtime import load_estimator, model_line, set_cpu_threads
from .depth_node import DepthNode, _cuda_available, _release_cuda_memory
from .entry import run_node
from .overlap import LatestOnly


class DepthLifecycleNode(DepthNode, LifecycleNode):
    """DepthNode whose start/stop follow the lifecycle transitions."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.estimator = None
        self._active_entities: list = []

    # ------------------------------------------------------------------ transitions
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.params = P.validate({name: self.get_parameter(name).value
                                      for name in P.SPECS})
            if self.params['device'] == 'cpu' or (self.params['device'] == 'auto'
                                                  and not _cuda_available()):
                self.get_logger().info(f'torch CPU threads: {set_cpu_threads()}')
            self.estimator = load_estimator(self.params)
        except Exception as exc:        # bad parameters, a model that cannot be loaded
            self.get_logger().error(f'configure failed: {exc}')
            self.estimator = None
            return TransitionCallbackReturn.FAILURE
        info = self.estimator.describe()
        self.get_logger().info(f'configured: model {model_line(info)}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        before = self._entities()
        self._stop = threading.Event()
        self._images = LatestOnly()
        try:
            self.start(self.estimator)
        except Exception as exc:
            self.get_logger().error(f'activate failed: {exc}')
            self._deactivate()
            return TransitionCallbackReturn.FAILURE
        self._active_entities = [e for e in self._entities() if id(e) not in
                                 {id(b) for b in before}]
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self.get_logger().info('deactivated: no longer subscribed or publishing')
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_model()
        self.get_logger().info('cleaned up: model released')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._release_model()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._release_model()
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ helpers
    def _entities(self) -> list:
        return list(self.subscriptions) + list(self.publishers) + list(self.timers)

    def _deactivate(self) -> None:
        self.stop()
        callback = getattr(self, '_parameters_callback', None)
        if callback is not None:
            self.remove_on_set_parameters_callback(callback)
            self._parameters_callback = None
        for entity in self._active_entities:
            if entity in list(self.subscriptions):
                self.destroy_subscription(entity)
            elif entity in list(self.publishers):
                self.destroy_publisher(entity)
            elif entity in list(self.timers):
                self.destroy_timer(entity)
        self._active_entities = []
        self.publishers_by_output = {}

    def _release_model(self) -> None:
        self.estimator = None
        self.pipeline = None
        gc.collect()
        _release_cuda_memory()

    @property
    def is_configured(self) -> bool:
        return self.estimator is not None


def _announce(node: DepthLifecycleNode) -> None:
    node.get_logger().info('lifecycle node up (unconfigured): configure loads the model, '
                           'activate starts publishing')


def main(args=None, fast_exit: bool = True) -> int:
    return run_node('depth_lifecycle_node', DepthLifecycleNode, _announce,
                    DepthLifecycleNode._deactivate, args=args, fast_exit=fast_exit)


if __name__ == '__main__':
    sys.exit(main())
