"""Install the nightly top-N recommender as one namespaced package.

The repo keeps ``jobs/`` and ``pipelines/`` at the top level (where people look for them), but
installs them as ``nightly_topn.jobs`` and ``nightly_topn.pipelines`` so no generic top-level
module names land in anyone's Airflow environment. The Great Expectations project in
``expectations/`` ships as package data of ``nightly_topn.expectations``.
"""
from setuptools import setup

setup(
    name="nightly-topn",
    version="0.1.0",
    description="Nightly batch recommender: Airflow + Great Expectations + implicit/torch + Beam top-N to Parquet",
    python_requires=">=3.11,<3.12",
    packages=[
        "nightly_topn",
        "nightly_topn.sources",
        "nightly_topn.models",
        "nightly_topn.serving",
        "nightly_topn.jobs",
        "nightly_topn.pipelines",
        "nightly_topn.expectations",
    ],
    package_dir={
        "nightly_topn.jobs": "jobs",
        "nightly_topn.pipelines": "pipelines",
        "nightly_topn.expectations": "expectations",
    },
    package_data={"nightly_topn": ["templates/*.j2"],
                  "nightly_topn.expectations": ["gx/*.yml", "gx/*.json", "gx/**/*.json", "gx/**/*.yml", "gx/**/*.css"]},
    install_requires=[
        "apache-airflow==3.3.2",
        "apache-beam==2.77.*",
        "great-expectations>=1.24,<2",
        "implicit>=0.7,<0.8",
        "torch==2.13.0",
        "pyarrow>=17",
        "pandas>=2.2",
        "numpy>=1.26",
        "scipy>=1.11",
        "scikit-learn>=1.5",
        "threadpoolctl>=3",  # imported directly (BLAS threads off while implicit trains)
        "redis>=5,<9",  # versioned loads into Redis and the service's Redis backend
        "prometheus-client>=0.20",  # the service's /metrics
        "uvicorn>=0.30",  # the service's ASGI server
        "pydantic>=2",  # typed run parameters
        "filelock>=3.12",  # the date and publish locks
        "psutil>=5.9",  # is a staging folder's writer still alive
        "jinja2>=3.1",  # the run report's HTML
    ],
    # dask: the top-N step on Beam's Dask runner (a dask.distributed cluster); ann: approximate candidates
    # for huge catalogues (candidates=ann/auto, nightly_topn.ann); test: the suite and the development
    # tooling in tools/ (a local Airflow: httpx, PostgreSQL drivers; a local Dask cluster), faiss for test_ann
    extras_require={"dask": ["apache-beam[dask]==2.77.*"],
                    "ann": ["faiss-cpu==1.15.1"],
                    # an s3:// storage root: fsspec's S3 filesystem for the jobs, Beam's for the pipeline
                    "s3": ["s3fs==2026.9.0", "apache-beam[aws]==2.77.*"],
                    # Airflow's CeleryExecutor (Redis as the broker)
                    # celery<5.7: 5.7 removed celery.backends.database.retry, which provider 3.26 imports
                    "celery": ["apache-airflow-providers-celery>=3.26", "celery>=5.5,<5.7"],
                    "test": ["pytest>=8", "pytest-timeout>=2", "psycopg2-binary>=2.9", "asyncpg>=0.29", "httpx>=0.27",
                             "apache-beam[dask]==2.77.*", "faiss-cpu==1.15.1", "s3fs==2026.9.0",
                             "apache-beam[aws]==2.77.*", "moto[server]==5.2.5",
                             "apache-airflow-providers-celery>=3.26", "celery>=5.5,<5.7"]},
    entry_points={"console_scripts": ["nightly-topn=nightly_topn.cli:main"]},
)
