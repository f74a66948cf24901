"""Files in and out: every format pvt_np reads and writes, one module each (the public face is :mod:`pvt_np.weights`).

Low to high, each importing only those above it in this list:

* ``atomic``: :func:`~pvt_np.io.atomic.atomic_write`, so nothing saved is ever left half-written;
* ``filekind``: what a file holds, from its first bytes;
* ``checkpoint``: a training run's checkpoint (model, optimizer, schedule, progress) as one ``.npz``;
* ``keys``: timm's (= pvt_np's) parameter names and the official whai362/PVT names, both ways;
* ``record``: what every file pvt_np writes records about its model (variant, architecture, data);
* ``infer``: the architecture a foreign state_dict's shapes imply;
* ``state``: state_dicts as NumPy arrays, out of a model or out of a training script's wrappers;
* ``npz``, ``safetensors``, ``torch``: one weights format each, read and written;
* ``read``: any checkpoint into NumPy arrays, the format told from the content;
* ``load``: a checkpoint into a model, or the model it holds rebuilt;
* ``convert``: the ``pvt-np convert`` command;
* ``timm``: the PyTorch twin of a model (timm's pvt_v2 with the same architecture and weights).

Importing this package imports none of them, so the lower ones stay cheap to import.
"""
