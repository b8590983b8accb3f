"""The flat parameter arena: the parameters of one dtype in one contiguous buffer, so that an
optimizer step, a gradient clip, zeroing the gradients (or a future all-reduce) is one call
over one buffer, however many layers there are."""
import numpy as np

__all__ = ["Arena", "contiguous_run"]


def _address(a):
    return a.__array_interface__["data"][0]


def contiguous_run(arrays):
    """One flat view covering `arrays` when they lie back to back in one buffer, else None."""
    base = arrays[0].base
    if base is None or base.ndim != 1 or not base.flags.c_contiguous:
        return None
    start = _address(arrays[0])
    address = start
    for a in arrays:
        if a.base is not base or not a.flags.c_contiguous or _address(a) != address:
            return None
        address += a.nbytes
    offset = (start - _address(base)) // base.itemsize
    return base[offset:offset + (address - start) // base.itemsize]


class Arena:
    """The parameters of one dtype in one contiguous buffer: `.data` and `.grad` are flat
    (n,) arrays, and each Parameter's .data / .grad are views of them. Parameters that
    already lie back to back in one buffer (an earlier arena) are used in place."""

    def __init__(self, params):
        self.params = list(params)
        self.dtype = self.params[0].data.dtype
        data = contiguous_run([p.data for p in self.params])
        grad = contiguous_run([p.grad for p in self.params])
        if data is None or grad is None:
            data, grad = self._pack()
        self.data, self.grad = data, grad

    def _pack(self):
        n = sum(p.data.size for p in self.params)
        data, grad = np.empty(n, self.dtype), np.empty(n, self.dtype)
        offset = 0
        for p in self.params:
            size, shape = p.data.size, p.data.shape
            data[offset:offset + size] = p.data.reshape(-1)
            grad[offset:offset + size] = p.grad.reshape(-1)
            p.data = data[offset:offset + size].reshape(shape)
            p.grad = grad[offset:offset + size].reshape(shape)
            offset += size
        return data, grad

    @property
    def size(self):
        return self.data.size
