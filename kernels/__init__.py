"""Triton kernels. They know nothing of topoaudio's ops or models: tensors and launch sizes in,
tensors out. Importing this package needs triton; topoaudio.ops imports it only when a Triton
backend is chosen."""
