from setuptools import find_packages, setup

setup(
    name="tfcompress",
    version="0.1.0",
    description="Keras-3-native model compression for TensorFlow and TFLite (LiteRT)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["tfcompress", "tfcompress.*"]),
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "numpy",
        "ai-edge-litert",
        # int4, int16x8 and recipes: the maintained LiteRT-level quantizer.
        "ai-edge-quantizer",
        # load_digits reads scikit-learn's bundled copy: nothing is downloaded.
        "scikit-learn",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-xdist",
            "ruff",
            # Reference only: used in subprocesses by tests and benchmarks, never by the package.
            "tensorflow-model-optimization",
            "tf-keras",
            "matplotlib",
            # keras.callbacks.TensorBoard and tfc.pruning.PruningSummaries write through it.
            "tensorboard",
            # Its TransformerEncoder layer is one of the transformer blocks the tests compress.
            "keras-hub",
        ],
        "plots": ["matplotlib"],
    },
    # The console script parses its arguments in this TensorFlow-free module first.
    py_modules=["tfcompress_cli"],
    entry_points={"console_scripts": ["tfcompress=tfcompress_cli:main"]},
)
