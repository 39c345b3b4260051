"""The compiled batch step, in flow order (import the module you need; this file imports nothing,
so the step's output types can be read without TensorFlow):

- outputs.py      what the step returns: Predictions, Explanation, StepOutputs (no TensorFlow)
- targets.py      which class each image's map explains: pred, label, topk or a fixed index
- forward.py      the model's scores -> the scores explained and the outputs reported
- build.py        build_step: one tf.function per run (predictions, CAM, maps, stats)
- distributed.py  the same step split over the replicas of a tf.distribute strategy
"""
