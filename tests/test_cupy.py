"""CuPy: GPU results equal the NumPy ones, and every array-module API pvt_np uses exists in CuPy."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import F32_GRAD_TOL, F32_TOL, assert_close, assert_gradcheck, randn

import pvt_np
from pvt_np import backend, gradcheck, manual_seed, nn, ops
from pvt_np.counter_rng import CounterRng

PACKAGE_DIR = Path(pvt_np.__file__).parent
# Backend-generic code only: generators made by these (or annotated so) are NumPy's, never CuPy's.
_NUMPY_ONLY_GENERATORS = ("np.random.default_rng", "numpy.random.default_rng", "np.random.Generator")
# On the GPU float64 sums run in another order (cuBLAS, atomics): still ~1e-15, we allow 1e-12.
GPU_F64_TOL = 1e-12


def _import_cupy() -> Any:
    """cupy, or a skip saying why it cannot be imported."""
    try:
        return importlib.import_module("cupy")
    except Exception as err:  # ImportError, or a broken CUDA install raising something else
        pytest.skip(f"cupy cannot be imported: {type(err).__name__}: {err}")


# -- the GPU itself --------------------------------------------------------------------
@pytest.mark.gpu
def test_ops_on_gpu_match_numpy() -> None:
    """Forward and backward of the main ops on CuPy arrays equal the NumPy results."""
    cp = _import_cupy()
    rng = np.random.default_rng(0)

    def both(fwd: Any, bwd: Any, inputs: list[np.ndarray], what: str) -> None:
        out, cache = fwd(*inputs)
        dout = rng.standard_normal(np.shape(out))
        grads = bwd(dout, cache)
        gout, gcache = fwd(*[cp.asarray(a) for a in inputs])
        assert isinstance(gout, cp.ndarray), f"{what}: output left the GPU"
        ggrads = bwd(cp.asarray(dout), gcache)
        assert_close(gout, out, GPU_F64_TOL, f"{what} forward")
        for i, (g, h) in enumerate(zip(ggrads if isinstance(ggrads, tuple) else (ggrads,),
                                       grads if isinstance(grads, tuple) else (grads,), strict=True)):  # fmt: skip
            if h is not None:
                assert isinstance(g, cp.ndarray)
                assert_close(g, h, GPU_F64_TOL, f"{what} grad {i}")

    x = randn(rng, 2, 3, 13, 7)
    both(lambda a, w, b: ops.conv2d_forward(a, w, b, 2, 1), ops.conv2d_backward,
         [x, randn(rng, 4, 3, 3, 3), randn(rng, 4)], "conv2d dense")  # fmt: skip
    both(lambda a, w: ops.conv2d_forward(a, w, None, 1, 1, 3, True), ops.conv2d_backward,
         [x.transpose(0, 2, 3, 1).copy(), randn(rng, 3, 1, 3, 3)], "conv2d depthwise nhwc")  # fmt: skip
    both(lambda a, w: ops.conv2d_forward(a, w, None, 1, 1, 3), ops.conv2d_backward,
         [x, randn(rng, 6, 1, 3, 3)], "conv2d depthwise x2")  # fmt: skip
    both(ops.linear_forward, ops.linear_backward, [randn(rng, 2, 5, 7), randn(rng, 3, 7), randn(rng, 3)], "linear")
    both(ops.layer_norm_forward, ops.layer_norm_backward, [randn(rng, 2, 5, 7), randn(rng, 7), randn(rng, 7)], "ln")
    for approximate in ("none", "tanh"):
        both(lambda a, ap=approximate: ops.gelu_forward(a, ap), ops.gelu_backward, [x], f"gelu {approximate}")
    both(ops.softmax_forward, ops.softmax_backward, [x], "softmax")
    both(ops.attention_forward, ops.attention_backward,
         [randn(rng, 2, 2, 13, 4), randn(rng, 2, 2, 5, 4), randn(rng, 2, 2, 5, 4)], "attention")  # fmt: skip
    for cl in (False, True):
        both(lambda a, c=cl: ops.adaptive_avg_pool2d_forward(a, 7, c), ops.adaptive_avg_pool2d_backward,
             [randn(rng, 2, 15, 11, 3)], f"pool channels_last={cl}")  # fmt: skip
    both(lambda z: ops.cross_entropy_forward(z, np.array([0, 3, 1]), 0.1), ops.cross_entropy_backward,
         [randn(rng, 3, 5)], "cross_entropy")  # fmt: skip
    both(ops.token_mean_forward, ops.token_mean_backward, [randn(rng, 2, 13, 7)], "token_mean")


@pytest.mark.gpu
def test_random_ops_on_gpu() -> None:
    """GPU dropout masks: reproducible per seed, keep rate ~ 1-p, scale 1/(1-p), drawn on the device."""
    cp = _import_cupy()
    x = cp.ones((400, 500), dtype=cp.float32)
    manual_seed(3)
    y1, keep = ops.dropout_forward(x, 0.3)
    manual_seed(3)
    y2, _ = ops.dropout_forward(x, 0.3)
    assert isinstance(keep, cp.ndarray)
    assert bool(cp.all(y1 == y2))
    rate = float((keep != 0).mean())
    assert abs(rate - 0.7) < 5 * np.sqrt(0.21 / x.size)
    kept = cp.asnumpy(y1[y1 != 0])
    np.testing.assert_array_equal(kept, np.float32(1 / 0.7))
    _, pkeep = ops.drop_path_forward(cp.ones((1000, 3, 2)), 0.5)
    assert pkeep.shape == (1000, 1, 1)


@pytest.mark.gpu
def test_modules_on_gpu_match_cpu() -> None:
    """A Sequential moved with to('gpu') computes the CPU output and gradients; to('cpu') brings them back."""
    cp = _import_cupy()
    manual_seed(0)

    def make() -> nn.Sequential:
        manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=2, padding=1, dtype=np.float32),
            nn.Conv2d(4, 4, 3, padding=1, groups=4, dtype=np.float32),
            nn.AdaptiveAvgPool2d(2),
        )

    cpu, gpu = make(), make().to(device="gpu")
    assert gpu.device == "gpu" and all(isinstance(p.data, cp.ndarray) for p in gpu.parameters())
    x = np.random.default_rng(1).standard_normal((2, 3, 13, 7)).astype(np.float32)
    y = cpu(x)
    gy = gpu(cp.asarray(x))
    assert_close(gy, y, F32_TOL, "forward")
    g = np.ones_like(y)
    assert_close(gpu.backward(cp.asarray(g)), cpu.backward(g), F32_GRAD_TOL, "input grad")
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        assert_close(q.grad, p.grad, F32_GRAD_TOL, f"{name} grad")
    gpu.to(device="cpu")
    assert gpu.device == "cpu" and all(isinstance(p.grad, np.ndarray) for p in gpu.parameters())
    lin = nn.Linear(4, 3, dtype=np.float64).to(device="gpu")
    assert_gradcheck(gradcheck(lin, cp.asarray(np.random.default_rng(2).standard_normal((2, 4)))),
                     ["input", "weight", "bias"])  # fmt: skip
    assert backend.device_of(lin.state_dict()["weight"]) == "gpu"


# -- API surface (needs only `import cupy`, no GPU) --------------------------------------
def _chain(node: ast.AST) -> tuple[ast.AST, list[str]]:
    """(root node, attribute names) of an attribute chain a.b.c -> (a, ['b', 'c'])."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return node, parts[::-1]


def _dotted(node: ast.AST) -> str:
    root, parts = _chain(node)
    return ".".join([root.id, *parts]) if isinstance(root, ast.Name) else ""


def _is_call_to(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Call) and (_dotted(node.func) == name or _dotted(node.func).endswith("." + name))


def _is_generic_generator(node: ast.AST, generic_names: set[str]) -> bool:
    """Whether an expression yields a generator that may be CuPy's (not provably NumPy's)."""
    if isinstance(node, ast.Name):
        return node.id in generic_names
    if isinstance(node, ast.IfExp):
        return _is_generic_generator(node.body, generic_names) or _is_generic_generator(node.orelse, generic_names)
    if _is_call_to(node, "get_rng"):
        return not (node.args and _dotted(node.args[0]) in ("np", "numpy"))
    if isinstance(node, ast.Call):
        func = _dotted(node.func)
        return func.endswith("random.default_rng") and func not in _NUMPY_ONLY_GENERATORS
    return False


def _scopes(tree: ast.Module) -> list[ast.AST]:
    return [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))]


def _own_nodes(scope: ast.AST) -> list[ast.AST]:
    """The nodes of a scope, not descending into nested functions (they are scopes of their own)."""
    out: list[ast.AST] = []
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        out.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    return sorted(out, key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0)))  # source order


def collect_api(package_dir: Path) -> tuple[set[str], set[str], set[str]]:
    """Parse every .py under package_dir and return
    (attribute chains used on the array module, Generator methods called, cupyx / cupy.* module attributes used).

    Array module: a variable named ``xp`` or a ``get_array_module(...)`` call, e.g. xp.lib.stride_tricks.as_strided
    -> 'lib.stride_tricks.as_strided' (its prefixes are collected too). Generators: ``rng`` variables and
    ``get_rng(...)`` / ``xp.random.default_rng(...)`` results, except those that are NumPy's by construction
    (``np.random.default_rng``, ``get_rng(np)``) or by annotation (``rng: np.random.Generator``).
    Modules: ``import cupyx.scipy.special as special`` or ``from cupy.cuda import nccl``, then ``nccl.X``
    -> 'cupy.cuda.nccl.X'.
    """
    xp_chains: set[str] = set()
    gen_methods: set[str] = set()
    cupyx_attrs: set[str] = set()
    files = sorted(package_dir.rglob("*.py"))
    assert files, f"no Python files under {package_dir}"
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        cupyx_aliases: dict[str, str] = {}  # per file: `import cupyx.scipy.special as special` and the like
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(("cupyx", "cupy.")) and alias.asname:
                        cupyx_aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("cupyx", "cupy.")):
                for alias in node.names:
                    cupyx_aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                root, parts = _chain(node)
                if (isinstance(root, ast.Name) and root.id == "xp") or _is_call_to(root, "get_array_module"):
                    xp_chains.add(".".join(parts))
                if isinstance(node.value, ast.Name) and node.value.id in cupyx_aliases:
                    cupyx_attrs.add(f"{cupyx_aliases[node.value.id]}.{node.attr}")
        for scope in _scopes(tree):
            nodes = _own_nodes(scope)
            numpy_only: set[str] = set()
            generic: set[str] = set()
            args = scope.args if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else None
            for arg in (args.posonlyargs + args.args + args.kwonlyargs) if args else []:
                ann = _dotted(arg.annotation) if arg.annotation is not None else ""
                if ann in _NUMPY_ONLY_GENERATORS:
                    numpy_only.add(arg.arg)
                elif arg.arg == "rng":
                    generic.add(arg.arg)
            for node in nodes:
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        if not isinstance(target, ast.Name):
                            continue
                        if _is_generic_generator(node.value, generic):
                            generic.add(target.id)
                        elif isinstance(node.value, ast.Call) and (
                            _dotted(node.value.func) in _NUMPY_ONLY_GENERATORS or _is_call_to(node.value, "get_rng")
                        ):
                            numpy_only.add(target.id)
            generic -= numpy_only
            if "rng" not in numpy_only and any(isinstance(n, ast.Name) and n.id == "rng" for n in nodes):
                generic.add("rng")  # an unannotated rng of unknown origin: assume it may be CuPy's
            for node in nodes:
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    if _is_generic_generator(node.func.value, generic):
                        gen_methods.add(node.func.attr)
    return xp_chains, gen_methods, cupyx_attrs


def _has_path(obj: Any, dotted: str) -> bool:
    for name in dotted.split("."):
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def test_collector_finds_the_known_uses() -> None:
    """The AST collector is not vacuous: it sees uses that are known to be in pvt_np (runs without CuPy too)."""
    xp_chains, gen_methods, cupyx_attrs = collect_api(PACKAGE_DIR)
    for known in ("einsum", "lib.stride_tricks.as_strided", "ElementwiseKernel", "exp", "zeros", "array"):
        assert known in xp_chains, f"{known!r} not collected from pvt_np (got {sorted(xp_chains)})"
    assert "random" in gen_methods, f"Generator.random not collected (got {sorted(gen_methods)})"
    assert "choice" not in gen_methods, "a NumPy-only generator (grad_check's) was counted as generic"
    assert "uniform" not in gen_methods, "get_rng(np).uniform (NumPy-only) was counted as generic"
    assert "cupyx.scipy.special.erf" in cupyx_attrs
    assert "cupy.cuda.nccl.NcclCommunicator" in cupyx_attrs  # pvt_np.allreduce's GPU all-reduce
    assert "cuda.get_current_stream" in xp_chains


def test_collector_on_a_synthetic_package(tmp_path: Path) -> None:
    """The collector follows xp aliases, get_array_module(...) calls and generic/NumPy-only generators."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mod.py").write_text(
        "import numpy as np\n"
        "import cupyx.scipy.ndimage as nd\n"
        "from cupy.cuda import nccl\n"
        "from pvt_np.backend import get_array_module, get_rng\n"
        "def f(x, rng=None):\n"
        "    xp = get_array_module(x)\n"
        "    g = get_rng(xp) if rng is None else rng\n"
        "    nd.zoom(x, 2)\n"
        "    nccl.NcclCommunicator(2, nccl.get_unique_id(), 0)\n"
        "    return xp.fft.rfft(x) + get_array_module(x).no_such_fn(x) + g.permutation(3) + rng.shuffle(x)\n"
        "def h(rng: np.random.Generator):\n"
        "    local = np.random.default_rng(0)\n"
        "    return rng.choice(3) + local.bytes(2) + get_rng(np).uniform()\n"
    )
    xp_chains, gen_methods, cupyx_attrs = collect_api(tmp_path)
    assert xp_chains == {"fft", "fft.rfft", "no_such_fn"}
    assert gen_methods == {"permutation", "shuffle"}
    assert cupyx_attrs == {
        "cupyx.scipy.ndimage.zoom",
        "cupy.cuda.nccl.NcclCommunicator",
        "cupy.cuda.nccl.get_unique_id",
    }
    assert not _has_path(np, "no_such_fn") and _has_path(np, "lib.stride_tricks.as_strided")


def test_cupy_objects_have_the_methods_pvt_np_calls() -> None:
    """Methods called on CuPy objects rather than on the module (the collector sees only module chains).

    pvt_np.staging: ndarray.set(host, stream=...), Stream.record() and Event.synchronize();
    pvt_np.bench_worker: the memory pool's malloc / used_bytes / total_bytes / free_all_blocks and cuda.set_allocator;
    pvt_np.ops.cuda: RawModule.get_function.
    """
    cp = _import_cupy()
    assert {"set"} <= set(dir(cp.ndarray))
    assert hasattr(cp.cuda.Stream, "record") and hasattr(cp.cuda.Event, "synchronize")
    assert hasattr(cp.cuda, "set_allocator") and hasattr(cp, "get_default_memory_pool")
    for method in ("malloc", "used_bytes", "total_bytes", "free_all_blocks"):
        assert hasattr(cp.cuda.MemoryPool, method), method
    assert hasattr(cp.RawModule, "get_function")
    xp_chains, _, _ = collect_api(PACKAGE_DIR)
    for chain in ("cuda.alloc_pinned_memory", "cuda.get_current_stream", "cuda.Device", "RawModule", "uint64"):
        assert chain in xp_chains, f"{chain} is not collected from pvt_np"


def test_cupy_provides_every_api_pvt_np_uses() -> None:
    """Every xp.<chain>, Generator method and cupyx function used anywhere in pvt_np exists in CuPy."""
    cp = _import_cupy()
    xp_chains, gen_methods, cupyx_attrs = collect_api(PACKAGE_DIR)
    assert xp_chains and gen_methods, "nothing collected: the check would pass vacuously"
    assert {"einsum", "lib.stride_tricks.as_strided"} <= xp_chains
    missing = sorted(c for c in xp_chains if not _has_path(cp, c))
    assert not missing, f"cupy lacks: {', '.join('cupy.' + m for m in missing)}"
    # A CuPy Generator a caller passes as rng= (instantiating one needs a GPU), and pvt_np's own device generator.
    for generator in (cp.random.Generator, CounterRng):
        missing = sorted(m for m in gen_methods if not hasattr(generator, m))
        assert not missing, f"{generator.__module__}.{generator.__name__} lacks: {', '.join(missing)}"
    for dotted in sorted(cupyx_attrs | {"cupyx.scipy.special.erf"}):
        module_name, attr = dotted.rsplit(".", 1)
        module = importlib.import_module(module_name)  # cupy.cuda.nccl and the like load on import only
        assert hasattr(module, attr), f"{dotted} is missing"
