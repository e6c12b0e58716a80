"""Evaluation: the ``esi eval`` suite and the metrics and tasks it is made of.

- :mod:`~esi.eval.suite`       options, the task registry (task name -> runner) and ``run_evaluation``
- :mod:`~esi.eval.data`        records fitted to a model's input, shared by every task
- :mod:`~esi.eval.metrics`     AUC, F1 at training-chosen thresholds, recall@k
- :mod:`~esi.eval.zeroshot`    zero-shot AUC/F1 and its references (caption centroid, ECG prototype)
- :mod:`~esi.eval.probe`       linear probe on frozen embeddings
- :mod:`~esi.eval.finetune`    full fine-tuning vs random init (on the chosen device)
- :mod:`~esi.eval.patient_id`  one-shot patient identification
- :mod:`~esi.eval.retrieval`   ECG <-> caption recall@k
- :mod:`~esi.eval.query`       query by text: precision@k of class queries
- :mod:`~esi.eval.report`      the Markdown table (one column per model)
"""
