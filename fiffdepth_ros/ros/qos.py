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


def durability_policy(name: str) -> DurabilityPolicy:
    """'best_available' (Jazzy and newer) is transient-local towards publishers that all offer
    it, so a camera_info published once, latched, still arrives; volatile otherwise. Older
    distros get VOLATILE (a transient-local subscription would refuse volatile drivers)."""
    if name == 'best_available':
        return getattr(DurabilityPolicy, 'BEST_AVAILABLE', DurabilityPolicy.VOLATILE)
    if name == 'transient_local':
        return DurabilityPolicy.TRANSIENT_LOCAL
    if name == 'volatile':
        return DurabilityPolicy.VOLATILE
    raise ValueError(f"unknown durability '{name}': expected best_available, transient_local "
                     'or volatile')


def profile(reliability: str, depth: int, durability: str = 'volatile') -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=reliability_policy(reliability),
                      durability=durability_policy(durability))
