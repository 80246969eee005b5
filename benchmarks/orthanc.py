"""Orthanc as a reference server for the benchmarks (Debian package `orthanc`).

A fresh Orthanc per run: its own storage and SQLite index folders, DICOM on a free port, REST
on another (for the instance count), no compression, no plugins, any calling AE may store.
Orthanc, like DCMTK's storescp, listens on every interface; only 127.0.0.1 is connected to.
Installed with apt-get when missing (`ensure_installed`); ended by its own pid.
`query_retrieve_settings` adds what a query/retrieve comparison needs (see its docstring).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.dcmtk import (
    HOST,
    REFERENCE_MAX_PDU,
    START_TIMEOUT_S,
    dcmtk_environment,
    free_loopback_port,
    terminate,
    wait_for_echo,
)

ORTHANC_AE = "ORTHANC"
ORTHANC = Path("/usr/sbin/Orthanc")


def ensure_installed() -> Path:
    """Orthanc's binary, installing Debian's package first when it is missing."""
    if not ORTHANC.exists():
        as_root = [] if os.geteuid() == 0 else ["sudo"]
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "orthanc"],
        ):
            subprocess.run([*as_root, *command], check=True, env=environment, timeout=900)
    return ORTHANC


def version(binary: Path) -> str:
    """The first line of `Orthanc --version`."""
    completed = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    lines = (completed.stdout or completed.stderr).strip().splitlines()
    return lines[0] if lines else "Orthanc (unknown version)"


@dataclass
class OrthancServer:
    """One Orthanc process with an empty archive."""

    process: subprocess.Popen[bytes]
    port: int
    http_port: int

    @classmethod
    def start(
        cls,
        binary: Path,
        folder: Path,
        log_path: Path,
        settings: Mapping[str, Any] | None = None,
    ) -> OrthancServer:
        """Write a configuration under `folder`, start Orthanc, wait until it answers C-ECHO.

        `settings` are added to (or replace) the benchmark's base configuration.
        """
        server = cls.launch(binary, folder, log_path, settings)
        try:
            server.wait_until_ready(START_TIMEOUT_S)
        except BaseException:
            server.stop()
            raise
        return server

    @classmethod
    def launch(
        cls,
        binary: Path,
        folder: Path,
        log_path: Path,
        settings: Mapping[str, Any] | None = None,
    ) -> OrthancServer:
        """Write the configuration and start Orthanc without waiting for it to answer (the
        start-up measurement of tests/perf/latency.py polls on its own)."""
        port, http_port = free_loopback_port(), free_loopback_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "pacsd-benchmark-reference",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "StorageCompression": False,
            "DicomAet": ORTHANC_AE,
            "DicomPort": port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "SaveJobs": False,
            **(settings or {}),
        }
        config_path = folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(binary), str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dcmtk_environment(),  # Orthanc's DICOM is DCMTK's: TCP_NODELAY=1 as well
            )
        return cls(process, port, http_port)

    @property
    def ae_title(self) -> str:
        """Orthanc's DICOM AE title."""
        return ORTHANC_AE

    def wait_until_ready(self, timeout: float) -> None:
        """Poll C-ECHO until Orthanc answers; fail early if it exited."""
        wait_for_echo(self.process, self.port, ORTHANC_AE, "Orthanc", timeout)

    def count_instances(self) -> int:
        """Instances in Orthanc's index (REST /statistics)."""
        url = f"http://{HOST}:{self.http_port}/statistics"
        with urllib.request.urlopen(url, timeout=30) as response:
            statistics = json.loads(response.read())
        return int(statistics["CountInstances"])

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after a bound; the exit code."""
        return terminate(self.process)


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def dicomweb_settings() -> dict[str, Any]:
    """Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb), serving /dicom-web/ on the
    REST port; an empty dict when the plugin is not installed."""
    if not DICOMWEB_PLUGIN.exists():
        return {}
    return {
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
    }


def query_retrieve_settings(
    destinations: Mapping[str, int], case_sensitive_pn: bool = True
) -> dict[str, Any]:
    """Orthanc 1.10 settings for a query/retrieve comparison with pacsd.

    - C-FIND, C-GET and C-MOVE from any calling AE (DicomAlwaysAllow*), as pacsd's default
      policy allows, and `destinations` (AE title -> port on HOST) as C-MOVE destinations
      (DicomModalities; pacsd's AE table lists the same).
    - CaseSensitivePN: Orthanc's default (false) matches person names case-insensitively;
      pacsd's default is exact matching (query.person_name_case_insensitive false), both
      allowed by PS3.4 C.2.2.2.1. True makes both do the same work.
    - MaximumPduLength 128 KiB, Orthanc's maximum (default 16 KiB; pacsd offers 256 KiB).
    - SCP/SCU timeouts of an hour, so that an association idle while the other server is
      measured is not closed. Everything else is Orthanc's default (SynchronousCMove true,
      StorageAccessOnFind "Always", 4 DICOM threads, 128 MB storage cache).
    """
    modalities = {title: [title, HOST, port] for title, port in destinations.items()}
    return {
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": modalities,
        "CaseSensitivePN": case_sensitive_pn,
        "MaximumPduLength": REFERENCE_MAX_PDU,
        "DicomScpTimeout": 3600,
        "DicomScuTimeout": 3600,
    }
