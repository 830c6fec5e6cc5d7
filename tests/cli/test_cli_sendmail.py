"""``cxsmtp sendmail`` end to end: the real program (a subprocess, also through links
named sendmail and mailq), a real spool, and `cxsmtp send` to a real SMTP server
(aiosmtpd, tests/servers.py) to check what arrives."""

from __future__ import annotations

import os
import shutil
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import Isolated, assert_no_traceback, cxsmtp_argv, run_cxsmtp
from servers import RunningServer, entry_for, smtp_server

from carerix_smtp.config.file import Config, Settings, save_config

PHP = (
    "To: to@y.example\nCc: cc@y.example\nBcc: hidden@z.example\nFrom: shop@x.example\n"
    "Subject: order\n\nline 1\n.\nline 3\n"
)


def _configure(isolated: Isolated, spool: Path | None, port: int = 9, **settings: str) -> None:
    config = Config(
        path=isolated.config,
        settings=Settings(spool=str(spool) if spool else None, **settings),  # type: ignore[arg-type]
        servers={"local": entry_for(port)},
    )
    save_config(config)


def _spool(tmp_path: Path) -> Path:
    spool = tmp_path / "spool"
    spool.mkdir()
    return spool


def _queued(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.eml"))


def _deliver(server: RunningServer, count: int) -> None:
    result = run_cxsmtp("send")  # no SPOOL: the setting
    assert result.returncode == 0, result.stderr
    assert len(server.handler.messages) == count


def test_php_t_i_with_bcc_delivered(tmp_path: Path, isolated: Isolated) -> None:
    spool = _spool(tmp_path)
    with smtp_server() as server:
        _configure(isolated, spool, server.port)
        result = run_cxsmtp("sendmail", "-t", "-i", input=PHP)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        assert len(_queued(spool)) == 1
        _deliver(server, 1)
    got = server.handler.messages[0]
    assert got.mail_from == "shop@x.example"
    assert got.rcpt_tos == ["to@y.example", "cc@y.example", "hidden@z.example"]
    assert b"hidden@z.example" not in got.content and b"Bcc" not in got.content
    assert b"line 1\r\n..\r\nline 3" in got.content or b"line 1\r\n.\r\nline 3" in got.content
    assert b"Message-ID: <" in got.content and b"Date: " in got.content


def test_f_sender_and_recipients_as_arguments(tmp_path: Path, isolated: Isolated) -> None:
    spool = _spool(tmp_path)
    with smtp_server() as server:
        _configure(isolated, spool, server.port)
        text = "Subject: hi\n\nhello\n"
        result = run_cxsmtp(
            "sendmail", "-f", "bounce@x.example", "a@y.example", "b@y.example", input=text
        )
        assert result.returncode == 0, result.stderr
        _deliver(server, 1)
    got = server.handler.messages[0]
    assert got.mail_from == "bounce@x.example"
    assert got.rcpt_tos == ["a@y.example", "b@y.example"]
    assert b"a@y.example" not in got.content  # not shown: they were envelope only
    assert b"From: bounce@x.example" in got.content


def test_list_manager_style_members_as_arguments(tmp_path: Path, isolated: Isolated) -> None:
    """A list's message to its members: To names the list, the arguments the members.
    Only the members get it (RCPT TO), the header stays as written, and ``-t`` with an
    argument that To names leaves that address out."""
    spool = _spool(tmp_path)
    with smtp_server() as server:
        _configure(isolated, spool, server.port)
        text = "From: owner@x.example\nTo: list@x.example\nSubject: news\n\nhello\n"
        members = ["m1@y.example", "m2@z.example"]
        result = run_cxsmtp("sendmail", "-f", "list-bounces@x.example", *members, input=text)
        assert (result.returncode, result.stderr) == (0, "")
        text = "From: a@x.example\nTo: me@x.example, you@y.example\n\nhi\n"
        result = run_cxsmtp("sendmail", "-t", "-i", "me@x.example", input=text)
        assert (result.returncode, result.stderr) == (0, "")
        listed = run_cxsmtp("queue", "list")
        assert "-> m1@y.example, m2@z.example" in listed.stdout
        assert "-> you@y.example\n" in listed.stdout
        _deliver(server, 2)
    got = {m.mail_from: m for m in server.handler.messages}
    assert got["list-bounces@x.example"].rcpt_tos == members
    assert b"To: list@x.example\r\n" in got["list-bounces@x.example"].content
    assert got["a@x.example"].rcpt_tos == ["you@y.example"]
    for message in server.handler.messages:
        assert b"X-Cxsmtp" not in message.content


@pytest.mark.parametrize(("options", "kept"), [([], False), (["-i"], True), (["-oi"], True)])
def test_lone_dot_line(tmp_path: Path, isolated: Isolated, options: list[str], kept: bool) -> None:
    spool = _spool(tmp_path)
    _configure(isolated, spool)
    result = run_cxsmtp("sendmail", *options, "r@y.example", input="Subject: x\n\na\n.\nb\n")
    assert result.returncode == 0, result.stderr
    (queued,) = _queued(spool)
    assert queued.read_bytes().endswith(b"\na\n.\nb\n" if kept else b"\n\na\n")


def _link(tmp_path: Path, name: str) -> Path:
    link = tmp_path / "bin" / name
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(cxsmtp_argv()[0])
    return link


def _run(argv: list[str], data: str = "") -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, input=data, capture_output=True, text=True, check=False)
    assert_no_traceback(argv, result.stderr)
    return result


def test_links_named_sendmail_and_mailq(tmp_path: Path, isolated: Isolated) -> None:
    if not cxsmtp_argv()[0].endswith("cxsmtp"):
        pytest.skip("the cxsmtp console script is not installed next to this python")
    spool = _spool(tmp_path)
    _configure(isolated, spool)
    sendmail = _link(tmp_path, "sendmail")
    result = _run([str(sendmail), "-t", "-i"], PHP)
    assert result.returncode == 0, result.stderr
    (queued,) = _queued(spool)
    listed = _run([str(_link(tmp_path, "mailq"))])
    assert listed.returncode == 0, listed.stderr
    assert queued.name.removesuffix(".eml") in listed.stdout
    assert "shop@x.example" in listed.stdout
    bp = run_cxsmtp("sendmail", "-bp")
    assert bp.returncode == 0 and queued.name.removesuffix(".eml") in bp.stdout


def test_console_script(tmp_path: Path, isolated: Isolated) -> None:
    script = Path(cxsmtp_argv()[0]).with_name("cxsmtp-sendmail")
    if not script.exists():
        pytest.skip("cxsmtp-sendmail is not installed (pip install -e .)")
    spool = _spool(tmp_path)
    _configure(isolated, spool)
    result = _run([str(script), "-oi", "r@y.example"], "Subject: x\n\nb\n")
    assert result.returncode == 0, result.stderr
    assert len(_queued(spool)) == 1


def test_no_spool_exit_78_with_hint(isolated: Isolated) -> None:
    _configure(isolated, None)
    result = run_cxsmtp("sendmail", "-t", input=PHP, env={"CXSMTP_SPOOL": ""})
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        "cxsmtp: error: no spool given and none configured; name one (cxsmtp send SPOOL) or "
        "set it: cxsmtp settings set spool /var/spool/cxsmtp (or CXSMTP_SPOOL)"
    ]


def test_unknown_option_exit_64(tmp_path: Path, isolated: Isolated) -> None:
    spool = _spool(tmp_path)
    _configure(isolated, spool)
    result = run_cxsmtp("sendmail", "-bi", "r@y.example", input="Subject: x\n\nb\n")
    assert result.returncode == 64
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("cxsmtp: error: sendmail: unknown option -bi;")
    assert _queued(spool) == []


def test_ignored_options_accepted(tmp_path: Path, isolated: Isolated) -> None:
    spool = _spool(tmp_path)
    _configure(isolated, spool)
    argv = [
        "-FCronDaemon",
        "-i",
        "-B8BITMIME",
        "-oem",
        "-odi",
        "-oQ/x",
        "-N",
        "never",
        "-R",
        "hdrs",
        "-X",
        "/tmp/nowhere",
        "-O",
        "A=B",
        "root@y.example",
    ]
    result = run_cxsmtp("sendmail", *argv, input="Subject: cron\n\nout\n")
    assert (result.returncode, result.stderr) == (0, "")
    (queued,) = _queued(spool)
    assert b"From: CronDaemon <" in queued.read_bytes()
    assert not Path("/tmp/nowhere").exists()


def test_bad_message_exit_65(tmp_path: Path, isolated: Isolated) -> None:
    spool = _spool(tmp_path)
    _configure(isolated, spool)
    result = run_cxsmtp("sendmail", "-t", input="Subject: nobody\n\nb\n")
    assert result.returncode == 65
    assert "no recipients in To, Cc or Bcc" in result.stderr
    assert _queued(spool) == []


def test_sendmail_mode_send_delivers_at_once(tmp_path: Path, isolated: Isolated) -> None:
    spool = _spool(tmp_path)
    with smtp_server() as server:
        _configure(isolated, spool, server.port, sendmail_mode="send")
        result = run_cxsmtp("sendmail", "-t", "-i", input=PHP)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        assert len(server.handler.messages) == 1
    assert _queued(spool) == []
    assert len(list((spool / "sent").glob("*.eml"))) == 1


def test_send_mode_with_unreachable_server_still_queues(tmp_path: Path, isolated: Isolated) -> None:
    from conftest import free_port

    spool = _spool(tmp_path)
    _configure(isolated, spool, free_port(), sendmail_mode="send")
    result = run_cxsmtp("sendmail", "-t", "-i", input=PHP)
    assert result.returncode == 0, result.stderr
    assert len(_queued(spool)) + len(list((spool / "deferred").glob("*.eml"))) == 1


def test_q_is_a_send_run(tmp_path: Path, isolated: Isolated) -> None:
    spool = _spool(tmp_path)
    with smtp_server() as server:
        _configure(isolated, spool, server.port)
        assert run_cxsmtp("sendmail", "-t", "-i", input=PHP).returncode == 0
        result = run_cxsmtp("sendmail", "-q")
        assert result.returncode == 0, result.stderr
        assert "sent 1, deferred 0, failed 0" in result.stdout
        assert len(server.handler.messages) == 1


def test_send_and_status_use_the_env_spool(tmp_path: Path, isolated: Isolated) -> None:
    spool = _spool(tmp_path)
    with smtp_server() as server:
        _configure(isolated, None, server.port)
        env = {"CXSMTP_SPOOL": str(spool)}
        assert (
            run_cxsmtp("sendmail", "r@y.example", input="Subject: x\n\nb\n", env=env).returncode
            == 0
        )
        status = run_cxsmtp("status", "--json", env=env)
        assert status.returncode == 0, status.stderr
        assert '"queued": 1' in status.stdout
        result = run_cxsmtp("send", env=env)
        assert result.returncode == 0, result.stderr
        assert len(server.handler.messages) == 1


def test_send_without_spool_exit_78(isolated: Isolated) -> None:
    _configure(isolated, None)
    result = run_cxsmtp("send", env={"CXSMTP_SPOOL": ""})
    assert result.returncode == 78
    assert "cxsmtp settings set spool /var/spool/cxsmtp" in result.stderr


def test_enqueue_and_retry_keep_old_forms_and_default(tmp_path: Path, isolated: Isolated) -> None:
    spool = _spool(tmp_path)
    _configure(isolated, spool)
    msg = "From: a@x.example\nTo: b@y.example\nSubject: s\n\nb\n"
    old = run_cxsmtp("enqueue", str(spool), "-", input=msg)
    assert old.returncode == 0, old.stderr
    new = run_cxsmtp("enqueue", "-", input=msg)
    assert new.returncode == 0, new.stderr
    (tmp_path / "m.eml").write_text(msg)
    by_file = run_cxsmtp("enqueue", str(tmp_path / "m.eml"))
    assert by_file.returncode == 0, by_file.stderr
    assert len(_queued(spool)) == 3
    (spool / "failed").mkdir()
    (spool / "failed" / "x.eml").write_text(msg)
    retried = run_cxsmtp("retry", "x.eml")
    assert (retried.returncode, retried.stdout) == (0, "queued again: x.eml\n"), retried.stderr


def test_help(isolated: Isolated) -> None:
    result = run_cxsmtp("sendmail", "--help")
    assert result.returncode == 0
    assert 'ln -s "$(command -v cxsmtp)" /usr/sbin/sendmail' in result.stdout
    assert "Exit codes" in result.stdout and "-oe*" in result.stdout
    listed = run_cxsmtp("--help")
    assert "sendmail" in listed.stdout


def test_settings_cli(tmp_path: Path, isolated: Isolated) -> None:
    assert run_cxsmtp("settings", "set", "spool", str(tmp_path / "s")).returncode == 0
    assert run_cxsmtp("settings", "set", "retain-sent", "12h").returncode == 0
    shown = run_cxsmtp("settings", "show", "--json")
    assert '"retain_sent": 43200.0' in shown.stdout
    assert f'"spool": "{tmp_path / "s"}"' in shown.stdout
    bad = run_cxsmtp("settings", "set", "sendmail-mode", "later")
    assert bad.returncode == 64
    assert bad.stderr.strip() == "cxsmtp: error: sendmail-mode must be queue or send, not 'later'"


# --- real programs that call sendmail ---------------------------------------------------


def test_django_style_popen(tmp_path: Path, isolated: Isolated) -> None:
    """As Django's sendmail backends call it: Popen([sendmail, "-t", "-i"], stdin=PIPE)
    with EmailMessage.as_bytes()."""
    spool = _spool(tmp_path)
    msg = EmailMessage()
    msg["From"] = "site@x.example"
    msg["To"] = "user@y.example"
    msg["Bcc"] = "audit@z.example"
    msg["Subject"] = "Wélcome"
    msg.set_content("Hello,\n.\nbye\n")
    with smtp_server() as server:
        _configure(isolated, spool, server.port)
        proc = subprocess.Popen([*cxsmtp_argv(), "sendmail", "-t", "-i"], stdin=subprocess.PIPE)
        proc.communicate(msg.as_bytes())
        assert proc.returncode == 0
        _deliver(server, 1)
    got = server.handler.messages[0]
    assert got.rcpt_tos == ["user@y.example", "audit@z.example"]
    assert b"audit@z.example" not in got.content


def test_s_nail(tmp_path: Path, isolated: Isolated) -> None:
    """mail(1) from Debian's s-nail, with mta= a link named sendmail."""
    snail = shutil.which("s-nail")
    if snail is None:
        if os.environ.get("CI"):  # .ci/run installs it: a skip there would hide the test
            pytest.fail("s-nail is not installed; .ci/run installs it")
        pytest.skip("s-nail is not installed (apt-get install -y s-nail)")
    spool = _spool(tmp_path)
    sendmail = _link(tmp_path, "sendmail")
    with smtp_server() as server:
        _configure(isolated, spool, server.port)
        env = {**os.environ, "MAILRC": "/dev/null", "HOME": str(tmp_path)}
        result = subprocess.run(
            [
                snail,
                "-:/",
                "-S",
                f"mta={sendmail}",
                "-S",
                "sendwait",
                "-r",
                "app@x.example",
                "-s",
                "disk full",
                "ops@y.example",
            ],
            input="df says 99%\n.\nend\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=20,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        _deliver(server, 1)
    got = server.handler.messages[0]
    assert got.rcpt_tos == ["ops@y.example"]
    assert got.mail_from == "app@x.example"
    assert b"Subject: disk full" in got.content and b"df says 99%" in got.content
