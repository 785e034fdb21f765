"""Topic discovery for process_bag: unambiguous choices are made, ambiguous ones explained."""
import pytest

from fiffdepth_ros.bag.topics import (CAMERA_INFO, COMPRESSED, DISPARITY, IMAGE, POINTCLOUD2,
                                      TopicError, camera_namespace, choose_topics, output_topics)

REALSENSE_LIKE = {
    '/cam/color/image_raw': IMAGE,
    '/cam/color/image_raw/compressed': COMPRESSED,
    '/cam/color/camera_info': CAMERA_INFO,
    '/cam/depth/image_rect_raw': IMAGE,
    '/cam/depth/camera_info': CAMERA_INFO,
    '/cam/aligned_depth_to_color/image_raw': IMAGE,
    '/tf_static': 'tf2_msgs/msg/TFMessage',
}


def test_single_camera_is_found_with_its_camera_info_by_namespace():
    choice = choose_topics(REALSENSE_LIKE)
    # Depth images are not camera images; raw and compressed of one camera are one stream.
    assert choice.image == '/cam/color/image_raw' and not choice.image_compressed
    assert choice.camera_info == '/cam/color/camera_info'
    assert choice.lidar is None and choice.stereo is None and choice.stereo_source == 'none'


def test_image_transport_compressed_prefers_the_compressed_stream():
    choice = choose_topics(REALSENSE_LIKE, prefer_compressed=True)
    assert choice.image == '/cam/color/image_raw/compressed' and choice.image_compressed
    assert choice.camera_info == '/cam/color/camera_info'


def test_two_cameras_are_ambiguous_and_the_error_lists_candidates_and_option():
    types = dict(REALSENSE_LIKE, **{'/cam/infra1/image_rect_raw': IMAGE,
                                    '/cam/infra1/camera_info': CAMERA_INFO})
    with pytest.raises(TopicError) as err:
        choose_topics(types)
    text = str(err.value)
    assert '/cam/color/image_raw' in text and '/cam/infra1/image_rect_raw' in text
    assert '--image-topic' in text
    # Naming the camera resolves it, and its own camera_info follows.
    choice = choose_topics(types, image='/cam/infra1/image_rect_raw')
    assert choice.camera_info == '/cam/infra1/camera_info'


def test_camera_info_is_looked_up_in_parent_namespaces():
    types = {'/robot/front/camera/image_raw': IMAGE, '/robot/front/camera_info': CAMERA_INFO,
             '/robot/rear/camera_info': CAMERA_INFO}
    assert choose_topics(types).camera_info == '/robot/front/camera_info'


def test_camera_info_in_another_namespace_is_never_guessed():
    types = {'/a/image_raw': IMAGE, '/b/camera_info': CAMERA_INFO, '/c/camera_info': CAMERA_INFO}
    with pytest.raises(TopicError, match='--camera-info-topic'):
        choose_topics(types)
    # Not even the bag's only camera_info: another camera's intrinsics would corrupt the output.
    with pytest.raises(TopicError, match='candidates: /b/camera_info; choose one with --camera-info-topic'):
        choose_topics({'/a/image_raw': IMAGE, '/b/camera_info': CAMERA_INFO})
    given = choose_topics({'/a/image_raw': IMAGE, '/b/camera_info': CAMERA_INFO},
                          camera_info='/b/camera_info')
    assert given.camera_info == '/b/camera_info'


def test_missing_camera_info_is_allowed_with_a_note():
    choice = choose_topics({'/a/image_raw': IMAGE})
    assert choice.camera_info is None
    assert any('no camera_info' in n for n in choice.notes)


def test_lidar_is_chosen_only_when_asked_and_ambiguity_is_an_error():
    types = dict(REALSENSE_LIKE, **{'/ouster/points': POINTCLOUD2})
    assert choose_topics(types).lidar is None
    assert any('--lidar-topic' in n for n in choose_topics(types).notes)
    assert choose_topics(types, use_lidar=True).lidar == '/ouster/points'
    # use_lidar from a robot's params file on a bag without LiDAR: a note, like the node.
    without = choose_topics(REALSENSE_LIKE, use_lidar=True)
    assert without.lidar is None and any('no PointCloud2' in n for n in without.notes)
    types['/velodyne_points'] = POINTCLOUD2
    with pytest.raises(TopicError) as err:
        choose_topics(types, use_lidar=True)
    assert '/ouster/points' in str(err.value) and '--lidar-topic' in str(err.value)
    assert choose_topics(types, lidar='/velodyne_points').lidar == '/velodyne_points'


def test_stereo_kind_follows_the_given_topic_type():
    types = dict(REALSENSE_LIKE, **{'/stereo/disparity': DISPARITY})
    assert choose_topics(types, stereo='/stereo/disparity').stereo_source == 'disparity'
    choice = choose_topics(types, stereo='/cam/depth/image_rect_raw')
    assert (choice.stereo, choice.stereo_source) == ('/cam/depth/image_rect_raw', 'depth')
    assert choose_topics(types, stereo_source='disparity').stereo == '/stereo/disparity'
    with pytest.raises(TopicError, match='--stereo-depth-topic'):
        choose_topics(types, stereo_source='depth')      # two depth images: ambiguous
    none = choose_topics(REALSENSE_LIKE, stereo_source='disparity')
    assert (none.stereo, none.stereo_source) == (None, 'none')


def test_given_topics_must_exist_with_a_usable_type():
    with pytest.raises(TopicError, match="not in the bag"):
        choose_topics(REALSENSE_LIKE, image='/nope')
    with pytest.raises(TopicError, match='has type'):
        choose_topics(REALSENSE_LIKE, camera_info='/cam/color/image_raw')
    with pytest.raises(TopicError, match='no camera image'):
        choose_topics({'/cam/depth/image_rect_raw': IMAGE})


def test_outputs_live_in_the_camera_namespace_like_the_node():
    assert camera_namespace('/camera/image_raw/compressed') == '/camera'
    assert camera_namespace('/image_raw') == '/'
    assert output_topics('/camera/image_raw')['depth'] == '/camera/depth/image'
    assert output_topics('/camera/image_raw/compressed')['points'] == '/camera/depth/points'
    assert output_topics('/image')['camera_info'] == '/depth/camera_info'
    assert output_topics('/camera/image_raw', 'out/ns')['relative'] == '/out/ns/depth/relative'
