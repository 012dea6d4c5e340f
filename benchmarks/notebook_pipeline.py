"""A faithful re-implementation of the original notebook's pipeline (the baseline).

Same steps as ``main_pipeline.py`` in the notebook: the 70,000 images as a float32 DataFrame,
its printed validation, its MD5 of ``hash_pandas_object``, the stratified split, the
StandardScaler + RandomForest pipeline, metrics, and MLflow file-store logging with the
flags MLflow 3.17 now needs (``MLFLOW_ALLOW_FILE_STORE``, cloudpickle serialization,
``name=``). Only the download is replaced: ``keras.datasets.mnist.load_data()`` needs the
internet, so the same four arrays are read from the mnistops cache.

Usage: python notebook_pipeline.py STORE_DIR N_ESTIMATORS MAX_DEPTH  (prints one JSON line)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import time

T0 = time.perf_counter()
os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"

import mlflow  # noqa: E402
import mlflow.sklearn  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.metrics import accuracy_score, classification_report, f1_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


def load_data() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Stand-in for keras.datasets.mnist.load_data(): the same uint8 arrays, from the cache."""
    from mnistops.data.cache import dataset_path

    with np.load(dataset_path("mnist")) as z:
        images, labels, is_train = z["images"], z["labels"], z["is_train"]
    return (images[is_train], labels[is_train]), (images[~is_train], labels[~is_train])


def cargar_dataset() -> pd.DataFrame:
    (x_train, y_train), (x_test, y_test) = load_data()
    X = np.concatenate([x_train, x_test], axis=0)
    y = np.concatenate([y_train, y_test], axis=0)
    X = X.reshape((X.shape[0], -1)).astype("float32") / 255.0
    df = pd.DataFrame(X)
    df["target"] = y
    return df


def hash_dataframe(df: pd.DataFrame) -> str:
    df_bytes = pd.util.hash_pandas_object(df, index=True).values
    return hashlib.md5(df_bytes).hexdigest()


def validar_dataset(df: pd.DataFrame) -> None:
    if df.empty:
        raise ValueError("Dataset vacío")
    if df.isna().sum().sum() > 0:
        print("Advertencia: hay valores nulos, se requiere imputación.")
    else:
        print("OK: no hay valores nulos.")
    num_cols = df.drop(columns=["target"])
    min_val = num_cols.min().min()
    max_val = num_cols.max().max()
    if min_val < 0 or max_val > 1:
        print(f"Advertencia: hay valores fuera de [0, 1]. min={min_val}, max={max_val}")
    else:
        print("OK: todas las features están en [0, 1].")
    print("Validación básica completada.")


def dividir_dataset(df: pd.DataFrame, test_size: float = 0.2):  # type: ignore[no-untyped-def]
    X = df.drop(columns=["target"])
    y = df["target"]
    return train_test_split(X, y, test_size=test_size, random_state=42, stratify=y)


def construir_pipeline(n_estimators: int = 100, max_depth: int | None = None) -> Pipeline:
    return Pipeline(
        steps=[
            ("scaler", StandardScaler(with_mean=False)),
            ("clf", RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth, random_state=42, n_jobs=-1)),
        ]
    )


def main(store: str, n_estimators: int, max_depth: int) -> dict[str, object]:
    mlflow.set_tracking_uri(f"file:{os.path.join(store, 'mlruns')}")
    mlflow.set_experiment("eva4_mnist_mlops_script")
    df = cargar_dataset()
    validar_dataset(df)
    X_train, X_test, y_train, y_test = dividir_dataset(df, test_size=0.2)
    with mlflow.start_run() as run:
        model = construir_pipeline(n_estimators=n_estimators, max_depth=max_depth)
        t = time.perf_counter()
        model.fit(X_train, y_train)
        fit_s = time.perf_counter() - t
        y_pred = model.predict(X_test)
        acc = accuracy_score(y_test, y_pred)
        f1 = f1_score(y_test, y_pred, average="macro")
        mlflow.log_param("n_estimators", n_estimators)
        mlflow.log_param("max_depth", max_depth)
        mlflow.log_param("test_size", 0.2)
        mlflow.log_param("dataset_hash", hash_dataframe(df))
        mlflow.log_metric("accuracy", acc)
        mlflow.log_metric("f1_macro", f1)
        report = classification_report(y_test, y_pred)
        report_path = os.path.join(store, "reporte_clasificacion.txt")
        with open(report_path, "w") as f:
            f.write(report)
        mlflow.log_artifact(report_path)
        info = mlflow.sklearn.log_model(model, name="modelo", serialization_format="cloudpickle")
    local = mlflow.artifacts.download_artifacts(info.model_uri) if not info.model_uri.startswith("file") else None
    size = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, fs in os.walk(local or store)
        for f in fs
        if "modelo" in d or local
    )
    return {
        "run_id": run.info.run_id,
        "accuracy": acc,
        "f1_macro": f1,
        "fit_s": fit_s,
        "model_bytes": size,
        "wall_s": time.perf_counter() - T0,
    }


if __name__ == "__main__":
    with contextlib.redirect_stdout(io.StringIO()):
        result = main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps(result))
