"""QoS profiles for the node's subscriptions and publishers."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy


def reliability_policy(name: str) -> ReliabilityPolicy:
    """'best_available' matches the publisher (Jazzy and newer); older distros get RELIABLE,
    which still matches reliable publishers, and large images need reliability anyway: over
    Fast DDS a best-effort subscriber received almost none of twenty 900 KB images."""
    if name == 'best_available':
        return getattr(ReliabilityPolicy, 'BEST_AVAILABLE', ReliabilityPolicy.RELIABLE)
    if name == 'best_effort':
        return ReliabilityPolicy.BEST_EFFORT
    if name == 'reliable':
        return ReliabilityPolicy.RELIABLE
    raise ValueError(f"unknown reliability '{name}': expected best_available, reliable or "
                     'best_effort')


def profile(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=reliability_policy(reliability),
                      durability=DurabilityPolicy.VOLATILE)
