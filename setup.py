from setuptools import find_packages, setup

setup(
    name="radmm_hpc",
    version="0.1.0",
    description="Training residual networks across MPI ranks without end-to-end backpropagation "
    "(RADMM, MAC/ParMAC, TRGL, A-SGD, DAP-SVRG) with backpropagation baselines",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["radmm_hpc", "radmm_hpc.*"]),
    package_data={"radmm_hpc.data": ["wine_quality/*.csv", "wine_quality/README.md",
                                     "wine_quality/SHA256SUMS"]},
    install_requires=[
        "numpy>=1.24",
        # 2.13.0 is the CPU wheel the README installs first; GPU users install their own build.
        "torch>=2.1",
        "mpi4py>=4.0",
        "h5py>=3.8",
        "tomli>=2.0; python_version<'3.11'",
    ],
    extras_require={
        "mpich": ["mpich"],
        # ruff and import-linter: the static checks of scripts/run-tests.sh (ruff.toml, .importlinter)
        "test": ["pytest>=7", "pytest-mpi>=0.6", "hypothesis>=6", "pytest-timeout>=2", "ruff>=0.4",
                 "import-linter>=2.17"],
        "plots": ["matplotlib>=3.5"],
        "digits": ["scikit-learn>=1.0"],
        "tensorboard": ["tensorboard>=2.10"],       # train.tensorboard = true
        "export": ["safetensors>=0.4"],             # radmm-hpc export --format safetensors
    },
    entry_points={"console_scripts": ["radmm-hpc=radmm_hpc.cli:main"]},
)
