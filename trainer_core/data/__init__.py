"""Data: a dataset folder as training sees it, and its report.

Scanning folders for images (``dataset_folder``, ``image_files``), captions' text (sidecar ``.txt``
files, trigger word, shuffling, dropout, tags: ``captions``), repeats and aspect-ratio buckets
(``dataset``, ``buckets``), loss masks (``masks``), regularisation images balanced against the training
images (``regularization``), and the checks and report a person reads before training
(``dataset_report``, ``report_text``, ``image_fingerprints``, and the pictures' quality flags:
``quality``); images held out for validation (``validation_split``). Clips (videos through PyAV, animated
gif/webp, folders of numbered frames: ``clips``), the frame windows they train (``clip_items``) and what the
report says of them (``clip_report``); the scan's options (``dataset_options``).

May use: no other room.
"""
