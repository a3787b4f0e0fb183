"""Job descriptions from Python: parse and validation errors with exact positions, rendering."""

from __future__ import annotations

import datetime
import pathlib

import pytest

import citron


def job_error(text: str, filename: str = "job.yaml") -> citron.JobError:
    with pytest.raises(citron.JobError) as info:
        citron.JobDescription.from_yaml(text, filename=filename).validate()
    return info.value


def test_unknown_field_is_reported_at_its_key() -> None:
    e = job_error("deployment:\n  start:\n    colour: red\n")
    assert len(e.errors) == 1
    d = e.errors[0]
    assert (d.file, d.line, d.column, d.field) == ("job.yaml", 3, 5, "deployment.start.colour")
    assert "colour" in d.message
    assert str(d) == f"job.yaml:3:5: deployment.start.colour: {d.message}"
    assert str(e) == str(d)


def test_every_error_is_reported_in_document_order() -> None:
    text = (
        "deployment:\n"                                   # 1
        "  start:\n"                                      # 2
        "    kernel:\n"                                   # 3
        "      data: abc\n"                               # 4
        "      sha256: nothex\n"                          # 5
        "    storage:\n"                                  # 6
        "      http:\n"                                   # 7
        "        - path: /../etc/passwd\n"                # 8
        "          data: x\n"                             # 9
    )
    e = job_error(text)
    got = [(d.line, d.column, d.field) for d in e.errors]
    assert got == [
        (5, 15, "deployment.start.kernel.sha256"),
        (8, 17, "deployment.start.storage.http[0].path"),
    ]
    assert str(e).splitlines() == [str(d) for d in e.errors]
    assert all(line.startswith("job.yaml:") for line in str(e).splitlines())


def test_unknown_template_variable_has_a_position() -> None:
    job = citron.JobDescription.from_yaml(
        "deployment:\n  start:\n    cmdline: console={{ tty }}\n", filename="tpl.yaml"
    )
    with pytest.raises(citron.JobError) as info:
        job.validate()
    [d] = info.value.errors
    # The position is that of `{{ tty }}` inside the value, not of the value's start.
    assert (d.file, d.line, d.column, d.field) == ("tpl.yaml", 3, 22, "deployment.start.cmdline")
    assert "tty" in d.message
    # The lab can define it.
    job.validate(lab=citron.Lab(variables={"tty": "ttyS0"}))


def test_job_error_is_a_value_error_and_a_citron_error() -> None:
    e = job_error("deployment:\n  start:\n    colour: red\n")
    assert isinstance(e, ValueError) and isinstance(e, citron.CitronError)
    assert e.errors[0].to_dict() == {
        "file": "job.yaml",
        "line": 3,
        "column": 5,
        "field": "deployment.start.colour",
        "message": e.errors[0].message,
    }


def test_yaml_syntax_error_is_a_job_error() -> None:
    with pytest.raises(citron.JobError) as info:
        citron.JobDescription.from_yaml("deployment: [\n", filename="broken.yaml")
    [d] = info.value.errors
    assert (d.file, d.line, d.column, d.field) == ("broken.yaml", 2, 1, "<document>")
    assert "YAML syntax error" in d.message
    assert str(d) == f"broken.yaml:2:1: <document>: {d.message}"  # the document has no key to name


def test_from_file_names_the_file_and_reads_relative_files(tmp_path: pathlib.Path) -> None:
    (tmp_path / "kernel.bin").write_bytes(b"\x7fELF....")
    p = tmp_path / "job.yaml"
    p.write_text("deployment:\n  start:\n    kernel: {file: kernel.bin}\n")
    job = citron.JobDescription.from_file(p)
    assert job.filename == str(p)
    [k] = job.render(dut="dut1").artifacts
    assert (k.kind, k.protocol, k.path, k.source, k.size) == ("kernel", "boot", "boot/dut1/kernel", "file", 8)
    assert k.url == (tmp_path / "kernel.bin").resolve().as_uri()


def test_from_file_of_a_missing_file_is_a_job_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(citron.JobError) as info:
        citron.JobDescription.from_file(tmp_path / "nope.yaml")
    assert "cannot read" in str(info.value)


def test_render_gives_plain_values() -> None:
    job = citron.JobDescription.from_yaml(
        "deployment:\n"
        "  start:\n"
        "    cmdline: [console=ttyS0, 'id={{ machine_id }}']\n"
        "    storage:\n"
        "      tftp:\n"
        "        - path: /cfg/config.txt\n"
        "          data: abc\n"
        "          lifetime: {access_count: 2, expiration: 1h}\n"
        "      http:\n"
        "        - path: /remote.img\n"
        "          url: http://127.0.0.1:9/remote.img\n"
        "          sha256: " + "ab" * 32 + "\n"
        "  continue:\n"
        "    cmdline: rescue\n"
    )
    r = job.render(dut="dut2")
    assert r.cmdline == "console=ttyS0 id=dut2"
    assert r.continue_cmdline == "rescue"
    # Order: kernel, initramfs, http files, tftp files, disks; start before continue.
    remote, tftp = r.artifacts
    assert tftp.to_dict() == {
        "step": "start",
        "kind": "file",
        "protocol": "tftp",
        "path": "cfg/config.txt",
        "source": "data",
        "url": None,
        "size": 3,
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "access_count": 2,
        "expiration": datetime.timedelta(hours=1),
        "readonly": None,
        "reset_on": None,
        "shared": None,
    }
    assert (remote.protocol, remote.source, remote.url, remote.size, remote.sha256) == (
        "http",
        "url",
        "http://127.0.0.1:9/remote.img",
        None,
        "ab" * 32,
    )
    assert r.to_dict()["artifacts"][1] == tftp.to_dict()


def test_render_for_an_unknown_dut_is_a_key_error() -> None:
    job = citron.JobDescription.from_yaml("deployment: {start: {}}")
    with pytest.raises(citron.UnknownDutError) as info:
        job.render(dut="nope")
    assert isinstance(info.value, KeyError)
    assert "nope" in str(info.value)
    with pytest.raises(KeyError):
        job.render(dut="dut1", lab=citron.Lab())


def test_render_uses_the_labs_machine_id_and_variables() -> None:
    lab = citron.Lab(variables={"base": "http://127.0.0.1:9000"})
    lab.add_dut("rpi", ip=["127.0.0.20"], machine_id="rpi-0042")
    job = citron.JobDescription.from_yaml(
        "deployment:\n  start:\n    cmdline: 'b={{ base }} m={{ machine_id }}'\n    kernel: {data: k}\n"
    )
    r = job.render(dut="rpi", lab=lab)
    assert r.cmdline == "b=http://127.0.0.1:9000 m=rpi-0042"
    assert r.artifacts[0].path == "boot/rpi-0042/kernel"


def test_offline_rendering_uses_the_default_serve_addresses_like_the_cli() -> None:
    job = citron.JobDescription.from_yaml(
        "deployment:\n  start:\n    cmdline: '{{ http_artifact_base }} {{ tftp_artifact_base }} {{ nbd_host }}:{{ nbd_port }}'\n"
    )
    assert job.render(dut="dut1").cmdline == "http://127.0.0.1:8080 tftp://127.0.0.1:6969 127.0.0.1:10809"
    lab = citron.Lab.default()
    with citron.Server(lab=lab, tftp=None) as srv:
        assert srv.nbd_address is not None
        host, port = srv.nbd_address
        assert job.render(dut="dut1", lab=srv).cmdline == f"{srv.http_url}  {host}:{port}"


def test_render_lists_disks() -> None:
    job = citron.JobDescription.from_yaml(
        "deployment:\n"
        "  start:\n"
        "    storage:\n"
        "      nbd:\n"
        "        - name: rootfs\n"
        "          filesystem: {type: ext4, size: 2G, data: {url: 'http://127.0.0.1:9/rootfs.tar.gz'}}\n"
        "        - name: scratch\n"
        "          raw: {size: 20G}\n"
        "          reset_on: boot\n"
        "          shared: true\n"
        "          expiration: 7 days\n"
        "        - name: image\n"
        "          url: http://127.0.0.1:9/disk.qcow2\n"
        "          readonly: true\n"
    )
    rootfs, scratch, image = job.render(dut="dut1").artifacts
    assert (rootfs.kind, rootfs.protocol, rootfs.path, rootfs.source, rootfs.size, rootfs.url) == (
        "disk",
        "nbd",
        "rootfs",
        "filesystem",
        2 << 30,
        "http://127.0.0.1:9/rootfs.tar.gz",
    )
    assert (rootfs.reset_on, rootfs.shared, rootfs.readonly) == ("job_start", False, False)
    assert (scratch.source, scratch.size, scratch.reset_on, scratch.shared) == ("raw", 20 << 30, "boot", True)
    assert scratch.expiration == datetime.timedelta(days=7)
    assert (image.source, image.url, image.readonly, image.size) == ("url", "http://127.0.0.1:9/disk.qcow2", True, None)


# The job of `citron validate`'s golden test for mixed errors: an unknown field (a shape
# problem) after an unknown template variable (found only by rendering).
MIXED = (
    "deployment:\n"                                   # 1
    "  start:\n"                                      # 2
    "    cmdline: console={{ tty }}\n"                # 3
    "    storage:\n"                                  # 4
    "      http:\n"                                   # 5
    "        - path: /a\n"                            # 6
    "          data: x\n"                             # 7
    "          colour: red\n"                         # 8
)


def test_from_file_with_a_lab_reports_shape_and_template_errors_at_once(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "mixed.yaml"
    p.write_text(MIXED)
    # Without a lab only the shape is checked, as before: templates depend on the lab.
    with pytest.raises(citron.JobError) as info:
        citron.JobDescription.from_file(p)
    assert [d.field for d in info.value.errors] == ["deployment.start.storage.http[0].colour"]
    # With one, the checks of `citron validate`: both problems in one error, in document order.
    with pytest.raises(citron.JobError) as info:
        citron.JobDescription.from_file(p, lab=citron.Lab.default())
    got = [(d.file, d.line, d.column, d.field) for d in info.value.errors]
    assert got == [
        (str(p), 3, 22, "deployment.start.cmdline"),
        (str(p), 8, 11, "deployment.start.storage.http[0].colour"),
    ]
    assert "unknown template variable `tty`" in info.value.errors[0].message
    # A lab that defines the variable leaves the shape problem only.
    lab = citron.Lab(variables={"tty": "ttyS0"})
    lab.add_dut("b", ip=["127.0.0.21"])
    with pytest.raises(citron.JobError) as info:
        citron.JobDescription.from_file(p, lab=lab)
    assert [d.line for d in info.value.errors] == [8]


def test_from_yaml_with_a_dut_checks_it_and_a_valid_job_loads() -> None:
    with pytest.raises(citron.JobError) as info:
        citron.JobDescription.from_yaml(MIXED, filename="m.yaml", dut="dut1")
    assert [d.line for d in info.value.errors] == [3, 8]
    with pytest.raises(citron.UnknownDutError):
        citron.JobDescription.from_yaml(MIXED, dut="nope")
    ok = "deployment:\n  start:\n    cmdline: 'm={{ machine_id }}'\n"
    job = citron.JobDescription.from_yaml(ok, filename="ok.yaml", lab=citron.Lab.default())
    assert job.render(dut="dut2").cmdline == "m=dut2"


def test_from_file_checks_against_a_running_server(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "job.yaml"
    p.write_text("deployment:\n  start:\n    cmdline: '{{ http_artifact_base }}/x {{ nope }}'\n")
    with citron.Server(tftp=None) as srv:
        with pytest.raises(citron.JobError) as info:
            citron.JobDescription.from_file(p, lab=srv, dut="dut1")
        [d] = info.value.errors
        assert (d.line, d.column) == (3, 42) and "nope" in d.message
