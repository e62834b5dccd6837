"""fairseq_distilled_emb: Distilled Embedding (factorized, distilled shared embeddings) for fairseq."""

from setuptools import find_packages, setup

setup(
    name="fairseq_distilled_emb",
    version="0.1.0",
    description="Distilled Embedding: compress fairseq Transformer embeddings as ReLU(U)·W",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fairseq_distilled_emb", "fairseq_distilled_emb.*"]),
    python_requires=">=3.8",
    install_requires=[
        # fairseq 0.12.2 does not install on Python 3.11+ (omegaconf pin, dataclass defaults);
        # the fairseq-fixed fork ships the same `fairseq` package and does.
        "fairseq>=0.12.2,<0.13; python_version < '3.11'",
        "fairseq-fixed==0.12.3.1; python_version >= '3.11'",
        # torch is deliberately a range the user's own (CPU or CUDA) build satisfies; `make setup`
        # installs the CPU wheel torch==2.13.0 only when torch is missing.
        "torch>=1.13",
        # fairseq 0.12 uses np.compat.long (token_block_dataset, language_pair_dataset): gone in 2.0
        "numpy<2",
        "sacrebleu>=2.0",
        "sentencepiece>=0.1.97",
    ],
    extras_require={
        # pytest-xdist: make test runs the suite on 2 workers (conftest shares the fixtures)
        # ctranslate2: the deployment anchor (its fairseq converter and runtime), tested
        "test": ["pytest>=7", "pytest-xdist>=3.8", "filelock", "tensorly-torch==0.5.0",
                 "tensorly>=0.8", "ctranslate2>=4.5,<5"],
        "benchmark": ["matplotlib>=3.5"],
        # the tensor-train embedding baseline (--embedding-factorization tensor-train)
        "tensor-train": ["tensorly-torch==0.5.0", "tensorly>=0.8"],
    },
    entry_points={
        "console_scripts": [
            "fairseq-distilled-emb = fairseq_distilled_emb.cli.__main__:main",
        ],
    },
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
