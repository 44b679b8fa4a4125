"""The engine box: onnxruntime sessions, provider choice, input validation, and what really ran.

Nothing here imports torch or transformers; onnxruntime itself is imported when
a session is created, not when this package is.
"""
