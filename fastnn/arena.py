"""The flat parameter arena: the parameters of one dtype in one contiguous buffer, so that an
optimizer step, a gradient clip, zeroing the gradients (or a future all-reduce) is one call
over one buffer, however many layers there are."""
import numpy as np

__all__ = ["Arena", "contiguous_run"]


def _address(a):
    return a.__array_interface__["data"][0]


def owns_memory(a):
    """Whether `a` is no view of another array. An unpickled array's base is the bytes object
    it was read from: that counts as its own."""
    return not isinstance(a.base, np.ndarray)


def contiguous_run(arrays):
    """One flat view covering `arrays` when they lie back to back in one buffer, else None."""
    base = arrays[0].base
    if not isinstance(base, np.ndarray) or base.ndim != 1 or not base.flags.c_contiguous:
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
    """The parameters of one dtype as flat buffers.

    Parameters that own their memory are packed into one contiguous buffer: each
    Parameter's .data / .grad become views of the flat `.data` / `.grad` (values kept).
    Parameters that are already views of a buffer (an earlier arena, e.g. the model's) are
    left where they are, so every other holder of that buffer keeps working: they are
    covered by `.runs`, the maximal stretches that lie back to back, one kernel call each.

    runs: list of (offset, data (m,), grad (m,)) flat views; offsets index a flat state
    buffer of `size` elements that follows the parameters' order.
    """

    def __init__(self, params):
        self.params = list(params)
        self.dtype = self.params[0].data.dtype
        if all(owns_memory(p.data) and owns_memory(p.grad) for p in self.params):
            self._pack()
        self.runs = self._find_runs()
        self.size = sum(p.data.size for p in self.params)

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

    def _find_runs(self):
        runs, start, offset = [], 0, 0
        for i in range(1, len(self.params) + 1):
            group = self.params[start:i]
            ends = i == len(self.params)
            if not ends:
                nxt = group + [self.params[i]]
                if (contiguous_run([p.data for p in nxt]) is not None
                        and contiguous_run([p.grad for p in nxt]) is not None):
                    continue
            data = contiguous_run([p.data for p in group]) if len(group) > 1 \
                else group[0].data.reshape(-1)
            grad = contiguous_run([p.grad for p in group]) if len(group) > 1 \
                else group[0].grad.reshape(-1)
            runs.append((offset, data, grad))
            offset += data.size
            start = i
        return runs

    @property
    def data(self):
        """The flat parameter buffer (n,), when the arena is one run."""
        return self._single(1)

    @property
    def grad(self):
        """The flat gradient buffer (n,), when the arena is one run."""
        return self._single(2)

    def _single(self, field):
        if len(self.runs) != 1:
            raise ValueError(f"arena: its parameters lie in {len(self.runs)} separate runs")
        return self.runs[0][field]
