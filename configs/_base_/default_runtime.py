# Runtime settings shared by every codetr config (mmdet 3.x defaults).
default_scope = 'mmdet'
# Registers the Co-DETR modules; `pip install -e .` (or tools/install.sh)
# makes `projects.codetr` importable from any working directory.
custom_imports = dict(imports=['projects.codetr'], allow_failed_imports=False)

# BufferedLogRuntimeInfoHook (projects/codetr/engine/buffered_log_hook.py)
# is mmengine's RuntimeInfoHook reading the losses from the device once per
# logger interval instead of every iteration, so that the host can issue the
# next iteration while the GPU finishes this one.
default_hooks = dict(
    runtime_info=dict(type='BufferedLogRuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))

# RNGStateHook (projects/codetr/engine/rng_state_hook.py) saves the random
# number generator states of every process in each checkpoint and restores
# them on --resume, so that a resumed run draws the same augmentations, noise
# and dropout as an uninterrupted one. A config that sets its own
# custom_hooks replaces this list: keep the hooks in it. (tools/train.py adds
# them, with a log line, to a config that has none.)
# LoadFromShapesHook (projects/codetr/engine/load_from_hook.py) says in one
# log line which tensors `load_from` left initialised because their shapes
# differ (the class layers, when fine-tuning on another number of classes).
# MatmulTF32Hook (projects/codetr/engine/tf32_hook.py) applies `tf32`: True
# runs float32 matrix products in TF32 on GPUs from Ampere on (faster, other
# numerics; docs/performance.md); False keeps PyTorch's full float32.
tf32 = False
custom_hooks = [
    dict(type='RNGStateHook'),
    dict(type='LoadFromShapesHook'),
    dict(type='MatmulTF32Hook')
]

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(
    type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)

log_level = 'INFO'
load_from = None
resume = False
