"""Builds ldseg_rt and its C++ sampler extension ldseg_rt._C.

kernels/ and export/ are top-level folders mapped into the package, so that
`import ldseg_rt.kernels` and `python -m ldseg_rt.export` work once installed.
"""
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

extension = Pybind11Extension(
    "ldseg_rt._C",
    sorted(glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3"],
)

setup(
    name="ldseg_rt",
    version="0.1.0",
    description="Inference runtime for diffusion models that segment medical images",
    packages=[*find_packages(include=["ldseg_rt", "ldseg_rt.*"]), "ldseg_rt.kernels", "ldseg_rt.export"],
    package_dir={"ldseg_rt.kernels": "kernels", "ldseg_rt.export": "export"},
    package_data={"ldseg_rt": ["builtin/*.pt"], "ldseg_rt.data": ["*.png"]},
    ext_modules=[extension],
    cmdclass={"build_ext": build_ext},
    python_requires=">=3.10",
    install_requires=["numpy", "torch", "tqdm", "pillow", "nibabel", "pydicom", "highdicom", "scipy", "matplotlib",
                      "onnx", "onnxruntime", "safetensors", "h5py"],
    extras_require={"tensorrt": ["tensorrt>=10.1,<11"], "gpu": ["triton"], "openvino": ["openvino>=2025.0"],
                    "serve": ["fastapi", "uvicorn", "pynetdicom", "prometheus-client"],
                    "ray": ["ray[data]>=2.52"]},  # segment --ray (ldseg_rt.distributed)
)
