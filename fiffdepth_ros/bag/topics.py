"""Which topics of a bag feed the pipeline: the camera image, its camera_info, LiDAR, stereo.

Given topics are checked (they must exist with a usable type); missing ones are found from the
topic types when exactly one candidate fits. Anything ambiguous is an error that lists the
candidates and names the option to pass, never a silent guess: a wrong camera_info or LiDAR
topic would give plausible-looking but wrong metric depth.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass

from .reader import normalize_topic

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
POINTCLOUD2 = 'sensor_msgs/msg/PointCloud2'
DISPARITY = 'stereo_msgs/msg/DisparityImage'

# Message type of each pipeline output (fiffdepth_ros.pipeline.OUTPUTS).
OUTPUT_TYPES = {'depth': IMAGE, 'camera_info': CAMERA_INFO, 'points': POINTCLOUD2,
                'relative': IMAGE, 'colorized': IMAGE}

# Name parts of image topics that are not camera images (depth sensors, our own outputs).
_NOT_CAMERA_WORDS = ('depth', 'disparity', 'relative', 'colorized', 'colourised')


class TopicError(ValueError):
    """A topic choice that cannot be made or does not fit; the message says what to pass."""


@dataclass(frozen=True)
class TopicChoice:
    image: str
    image_compressed: bool
    camera_info: str | None
    lidar: str | None
    stereo: str | None
    stereo_source: str          # 'none', 'depth' or 'disparity' (the parameter's values)
    notes: tuple[str, ...] = ()

    @property
    def inputs(self) -> list[str]:
        return [t for t in (self.image, self.camera_info, self.lidar, self.stereo) if t]


def camera_namespace(image_topic: str) -> str:
    """Namespace of a camera image topic: '/cam/color/image_raw/compressed' -> '/cam/color'."""
    topic = image_topic.rstrip('/')
    if topic.endswith('/compressed'):
        topic = topic[:-len('/compressed')]
    parent = posixpath.dirname(topic)
    return parent if parent != '' else '/'


def _words(topic: str) -> set[str]:
    return {w for part in topic.lower().split('/') for w in part.split('_') if w}


def _candidates_text(candidates) -> str:
    return ', '.join(sorted(candidates))


def _ambiguous(what: str, candidates, option: str) -> TopicError:
    return TopicError(f'several {what} topics in the bag: {_candidates_text(candidates)}; '
                      f'choose one with {option} TOPIC')


def choose_topics(types: dict[str, str], image: str | None = None,
                  camera_info: str | None = None, lidar: str | None = None,
                  stereo: str | None = None, use_lidar: bool = False,
                  stereo_source: str = 'none', prefer_compressed: bool = False,
                  calibration: bool = False) -> TopicChoice:
    """The topics to read. ``types`` maps every topic of the bag to its message type.

    use_lidar / stereo_source come from the parameters; giving a LiDAR or stereo topic enables
    that anchor source by itself (the stereo kind follows the topic's type).
    prefer_compressed: when a camera is recorded both raw and compressed, which one to use
    (the node's ``image_transport`` parameter).
    calibration: a calibration file (camera_info_url) stands in when the image's namespace has
    no camera_info topic.
    Topic names are compared normalised (a leading slash), as BagReader lists them.
    """
    types = {normalize_topic(t): ty for t, ty in types.items()}
    image, camera_info, lidar, stereo = (normalize_topic(t) if t else None
                                         for t in (image, camera_info, lidar, stereo))
    notes: list[str] = []
    image = _choose_image(types, image, prefer_compressed)
    compressed = types[image] == COMPRESSED
    camera_info = _choose_camera_info(types, image, camera_info, notes, calibration)

    clouds = [t for t, ty in types.items() if ty == POINTCLOUD2 and not _is_own_output(t)]
    if lidar is not None:
        lidar = _check_given(types, lidar, (POINTCLOUD2,), '--lidar-topic')
    elif use_lidar and clouds:
        lidar = _only(clouds, 'LiDAR (PointCloud2)', '--lidar-topic')
    elif use_lidar:
        notes.append('use_lidar is set but the bag has no PointCloud2 topic: no LiDAR anchors')
    elif clouds:
        notes.append(f'PointCloud2 topics not used for anchors ({_candidates_text(clouds)}): '
                     'pass --lidar-topic (and the LiDAR extrinsic parameters) to use one')

    if stereo is not None:
        kinds = {IMAGE: 'depth', DISPARITY: 'disparity'}
        stereo = _check_given(types, stereo, tuple(kinds), '--stereo-depth-topic')
        stereo_source = kinds[types[stereo]]
    elif stereo_source != 'none':
        if stereo_source == 'depth':
            what = 'stereo depth (Image with "depth" in its name)'
            found = [t for t, ty in types.items() if ty == IMAGE and t != image
                     and 'depth' in _words(t) and not _is_own_output(t)]
        else:
            what = 'stereo disparity (DisparityImage)'
            found = [t for t, ty in types.items() if ty == DISPARITY]
        if found:
            stereo = _only(found, what, '--stereo-depth-topic')
        else:     # like the node without that topic: no stereo anchors
            notes.append(f"stereo_source is '{stereo_source}' but the bag has no {what} topic: "
                         'no stereo anchors')
            stereo_source = 'none'
    return TopicChoice(image=image, image_compressed=compressed, camera_info=camera_info,
                       lidar=lidar, stereo=stereo, stereo_source=stereo_source,
                       notes=tuple(notes))


def _is_own_output(topic: str) -> bool:
    """Topics this package writes ('.../depth/image', '.../depth/relative', ...)."""
    parts = topic.strip('/').split('/')
    return len(parts) >= 2 and parts[-2] == 'depth' and parts[-1] in (
        'image', 'relative', 'colorized', 'camera_info', 'points')


def _only(candidates: list[str], what: str, option: str) -> str:
    """The one candidate (there is at least one); several are an error naming ``option``."""
    if len(candidates) > 1:
        raise _ambiguous(what, candidates, option)
    return candidates[0]


def _check_given(types, topic: str, allowed: tuple[str, ...], option: str) -> str:
    if topic not in types:
        raise TopicError(f"{option} '{topic}' is not in the bag; its topics: "
                         f'{_candidates_text(types)}')
    if types[topic] not in allowed:
        raise TopicError(f"{option} '{topic}' has type {types[topic]}; expected "
                         f"{' or '.join(allowed)}")
    return topic


def _choose_image(types, given, prefer_compressed: bool) -> str:
    if given is not None:
        return _check_given(types, given, (IMAGE, COMPRESSED), '--image-topic')
    cameras = [t for t, ty in types.items() if ty in (IMAGE, COMPRESSED)
               and not (_words(t) & set(_NOT_CAMERA_WORDS)) and not _is_own_output(t)]
    # One camera recorded raw and compressed ('X' and 'X/compressed') is one stream.
    streams: dict[str, list[str]] = {}
    for topic in cameras:
        key = topic[:-len('/compressed')] if topic.endswith('/compressed') else topic
        streams.setdefault(key, []).append(topic)
    if not streams:
        images = [t for t, ty in types.items() if ty in (IMAGE, COMPRESSED)]
        hint = f' (only {_candidates_text(images)}, which look like depth or outputs)' \
            if images else ''
        raise TopicError(f'no camera image topic (Image or CompressedImage) in the bag{hint}; '
                         'pass --image-topic TOPIC')
    if len(streams) > 1:
        raise _ambiguous('camera image', cameras, '--image-topic')
    variants = next(iter(streams.values()))
    if len(variants) == 1:
        return variants[0]
    wanted = COMPRESSED if prefer_compressed else IMAGE
    return next(t for t in variants if types[t] == wanted)


def _choose_camera_info(types, image: str, given, notes: list[str],
                        calibration: bool = False) -> str | None:
    if given is not None:
        return _check_given(types, given, (CAMERA_INFO,), '--camera-info-topic')
    infos = [t for t, ty in types.items() if ty == CAMERA_INFO and not _is_own_output(t)]
    if not infos:
        notes.append('no camera_info topic in the bag: intrinsics from the calibration file '
                     '(camera_info_url)' if calibration else
                     'no camera_info topic in the bag: no point cloud and no LiDAR anchors '
                     '(-p camera_info_url:=FILE gives a calibration)')
        return None
    # The camera_info of a camera lives in its namespace; walk up from the image's namespace.
    namespace = camera_namespace(image)
    while True:
        here = [t for t in infos if camera_namespace(t) == namespace]
        if len(here) == 1:
            return here[0]
        if len(here) > 1:
            raise _ambiguous(f'camera_info (in {namespace})', here, '--camera-info-topic')
        if namespace == '/':
            break
        namespace = posixpath.dirname(namespace) or '/'
    # Another camera's intrinsics would silently misplace every point and anchor: even the
    # bag's only camera_info is not taken from another namespace without being asked for.
    if calibration:
        notes.append(f"no camera_info topic in the namespace of '{image}': intrinsics from the "
                     'calibration file (camera_info_url)')
        return None
    raise TopicError(f"no camera_info topic in the namespace of '{image}'; candidates: "
                     f'{_candidates_text(infos)}; choose one with --camera-info-topic TOPIC')


def output_topics(image_topic: str, namespace: str | None = None) -> dict[str, str]:
    """Output name -> topic. Like the node, outputs live in the camera's namespace:
    image '/camera/image_raw' -> '/camera/depth/image', '/camera/depth/points', ..."""
    ns = camera_namespace(image_topic) if namespace is None else '/' + namespace.strip('/')
    ns = ns.rstrip('/')
    names = {'depth': 'depth/image', 'camera_info': 'depth/camera_info',
             'points': 'depth/points', 'relative': 'depth/relative',
             'colorized': 'depth/colorized'}
    return {key: f'{ns}/{rel}' for key, rel in names.items()}
