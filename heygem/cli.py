"""`python -m heygem`: generate | batch | avatars | models | keys | serve.

Any Settings field can also be given as a flag (`--models-dir`, `--device`, `--batch-size`, ...)
or as a HEYGEM_* environment variable; flags win.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heygem.engine.runtime import tune_process
from heygem.errors import HeygemError
from heygem.jobs.joblog import JobIdFilter
from heygem.settings import Settings

if TYPE_CHECKING:  # the engine package is imported only by the commands that run it
    from heygem.engine.api import FaceChoice, OptionSpec, SyncOptions

log = logging.getLogger("heygem.cli")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
FACE_NEAREST_POINT: FaceChoice = "nearest"  # what --face-point without --face-choice asks for
MIN_PASSWORD_CHARS = 8


def main(argv: Sequence[str] | None = None) -> int:
    tune_process()
    parser = _build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        settings = Settings.load(argv=rest)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    configure_logging(settings)
    try:
        return args.handler(args, settings)
    except HeygemError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_FAILED)
    except Exception as exc:  # an odd file must end in one line, never a traceback
        log.debug("unexpected failure", exc_info=True)
        return _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --log-level DEBUG)", EXIT_FAILED)


def configure_logging(settings: Settings) -> None:
    """Send heygem's logs to stdout (what containers collect), and to a file when one is set."""
    root = logging.getLogger()
    root.handlers.clear()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(settings.log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.addFilter(JobIdFilter())
        root.addHandler(handler)
    root.setLevel(settings.log_level.upper())


def _fail(message: str, code: int) -> int:
    print(f"heygem: error: {message}", file=sys.stderr)
    return code


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m heygem",
        description="Lip-sync a face video or photo to speech.",
        epilog="Every setting is also a flag (e.g. --models-dir, --device cuda, --batch-size 16, "
        "--precision bf16, --engine preview) or a HEYGEM_* environment variable.",
    )
    commands = parser.add_subparsers(dest="command")
    _add_generate(commands)
    _add_batch(commands)
    _add_avatars(commands)
    _add_models(commands)
    _add_keys(commands)
    serve = commands.add_parser("serve", help="run the web app and HTTP API")
    serve.set_defaults(handler=_serve)
    return parser


def _add_sync_options(parser: argparse.ArgumentParser) -> None:
    """One flag per SyncOptions field that has a per-job flag (--box T B L R, --pads, --smooth /
    --no-smooth, --blend, --fps, ...), generated from the option schema. Engine, precision and
    batch size are Settings flags instead."""
    from heygem.engine.api import option_specs

    for name, spec in option_specs().items():
        if spec.per_job_flag:
            _add_option_flag(parser, name, spec)


def _add_option_flag(parser: argparse.ArgumentParser, name: str, spec: OptionSpec) -> None:
    from heygem.engine.api import option_default, option_type

    flag = "--" + name.replace("_", "-")
    # Unset flags stay None, so SyncOptions (the one place defaults live) fills them in.
    common: dict[str, Any] = {
        "dest": name,
        "default": None,
        "help": spec.help + _default_note(option_default(name)),
    }
    if spec.widget == "check":
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
    elif spec.parts:
        parser.add_argument(flag, type=option_type(name), nargs=len(spec.parts), metavar=spec.parts, **common)
    elif spec.choices:
        parser.add_argument(flag, choices=spec.choices, **common)
    else:
        parser.add_argument(flag, type=option_type(name), **common)


def _default_note(default: object) -> str:
    if default is None or default == "":
        return ""
    if isinstance(default, bool):
        return f" (default: {'on' if default else 'off'})"
    if isinstance(default, tuple):
        return f" (default: {' '.join(map(str, default))})"
    return f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"


def _sync_options(args: argparse.Namespace, settings: Settings) -> SyncOptions:
    from heygem.engine.api import SyncOptions, option_specs

    values: dict[str, Any] = {}
    for name, spec in option_specs().items():
        given = getattr(args, name, None) if spec.per_job_flag else None
        if given is not None:
            values[name] = tuple(given) if spec.parts else given
    if "face_point" in values:  # a point alone means "the face nearest it"
        values.setdefault("face_choice", FACE_NEAREST_POINT)
    return SyncOptions(engine=settings.engine, **values)


def _add_generate(commands) -> None:
    generate = commands.add_parser("generate", help="make one lip-synced video")
    speech = generate.add_mutually_exclusive_group(required=True)
    speech.add_argument("--audio", type=Path, help="speech: any format ffmpeg reads")
    speech.add_argument("--text", help="text to speak instead of --audio (HEYGEM_TTS_* settings)")
    generate.add_argument("--voice", default=None, help="speech voice for --text (default: the provider's)")
    generate.add_argument(
        "--video",
        "--face",
        dest="video",
        required=True,
        help="face video, a photo (jpg/png/webp), or avatar:<id>",
    )
    generate.add_argument("--output", type=Path, required=True, help="the mp4 to write")
    _add_sync_options(generate)
    generate.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    import tempfile

    from heygem.jobs.execute import default_engine

    if args.voice is not None and args.text is None:
        raise HeygemError("--voice goes with --text")
    options = _sync_options(args, settings)
    face, reference = _face_of(args.video, settings)
    pipeline = default_engine(settings)
    with tempfile.TemporaryDirectory(prefix="heygem-speech-") as scratch, _StageBars() as bars:
        audio = args.audio
        if args.text is not None:
            from heygem.speech import synthesize_text

            audio = synthesize_text(
                args.text,
                Path(scratch) / "speech.wav",
                settings,
                voice=args.voice,
                reference=reference,
                on_progress=bars.update,
            ).path
        result = pipeline.run(audio, face, args.output, options, on_progress=bars.update)
    print(
        f"wrote {result.output} ({result.duration_s:.2f} s, {result.frames} frames, "
        f"engine {result.engine}, {result.frames_without_face} frames without a face, "
        f"{result.seconds:.1f} s)"
    )
    return EXIT_OK


def _add_batch(commands) -> None:
    batch = commands.add_parser("batch", help="run a JSONL manifest without a server")
    batch.add_argument("manifest", type=Path, help='JSONL: {"audio": ..., "video": ..., "output_name": ...}')
    batch.add_argument("--output-dir", type=Path, required=True, help="where the videos go")
    _add_sync_options(batch)
    batch.set_defaults(handler=_batch)


def _batch(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from heygem.jobs.runner import run_manifest

    options = _sync_options(args, settings)
    with tqdm(unit="item", desc="batch") as bar:

        def show(update) -> None:
            bar.total = update.count
            bar.n = update.index if update.result is not None else update.index - 1
            bar.set_postfix_str(f"{update.item.output_name}: {update.stage}", refresh=True)

        summary = run_manifest(settings, args.manifest, args.output_dir, options, on_progress=show)
    print(summary.describe())
    return EXIT_OK if summary.ok else EXIT_FAILED


def _face_of(video: str, settings: Settings) -> tuple[Path, Any]:
    """The face file and voice reference for --video: a file, or one of the local avatars."""
    from heygem.jobs.avatars import avatar_id_of

    if avatar_id_of(video) is None:
        return Path(video), None
    from heygem.jobs.avatars import face_for_run
    from heygem.jobs.records import DEFAULT_TENANT

    with _AvatarStore(settings) as store:
        found = face_for_run(store, settings, video, DEFAULT_TENANT)
    assert found is not None  # an avatar reference, checked above
    return found.face, found.reference


def _add_avatars(commands) -> None:
    avatars = commands.add_parser("avatars", help="stored faces (with a voice sample) to reuse")
    actions = avatars.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="store and prepare a face video or photo")
    add.add_argument("name")
    add.add_argument("file", type=Path, help="the person's video or photo")
    add.add_argument("--voice", type=Path, default=None, help="a sample of the person's voice")
    add.add_argument("--voice-text", default=None, help="the words spoken in --voice")
    add.set_defaults(handler=_avatars_add)
    listing = actions.add_parser("list", help="every avatar: id, status, name")
    listing.set_defaults(handler=_avatars_list)
    remove = actions.add_parser("rm", help="delete an avatar (videos made from it stay)")
    remove.add_argument("id")
    remove.set_defaults(handler=_avatars_rm)


class _AvatarStore:
    """The service's job database in the data folder, opened for one command."""

    def __init__(self, settings: Settings) -> None:
        from heygem.jobs.store import open_store

        self.store = open_store(settings)

    def __enter__(self) -> Any:
        self.store.open()
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


def _local_file(ref: str, kind: str, owned: tuple[str, ...]) -> str:
    """The CLI's user names files on their own machine: any readable file will do."""
    path = Path(ref).expanduser()
    if not path.is_file():
        raise HeygemError(f"{kind} file not found: {ref}")
    return str(path.resolve())


def _avatars_add(args: argparse.Namespace, settings: Settings) -> int:
    from heygem.jobs.avatars import READY, AvatarBook, AvatarPreparer
    from heygem.jobs.tenancy import LOCAL

    with _AvatarStore(settings) as store:
        book = AvatarBook(settings, store, _local_file, lambda avatar: None)
        avatar = book.create(
            args.name,
            args.file,
            principal=LOCAL,
            voice_audio=args.voice,
            voice_text=args.voice_text,
        )
        print(
            f"preparing avatar {avatar.id} ({avatar.name}): probing and finding the face...", file=sys.stderr
        )
        preparer = AvatarPreparer(settings, store)
        try:
            prepared = preparer.prepare(avatar)
        finally:
            preparer.stop()
    if prepared is None or prepared.status != READY:
        reason = prepared.error if prepared is not None else "deleted meanwhile"
        return _fail(f"avatar {avatar.id} could not be prepared: {reason}", EXIT_FAILED)
    print(f"{avatar.id} ready: {prepared.name} (use --video avatar:{avatar.id})")
    return EXIT_OK


def _avatars_list(args: argparse.Namespace, settings: Settings) -> int:
    from heygem.jobs.tenancy import LOCAL

    with _AvatarStore(settings) as store:
        found = store.list_avatars(LOCAL.scope)
    for avatar in found:
        length = (
            "photo"
            if avatar.is_image
            else (f"{avatar.duration_s:.1f} s" if avatar.duration_s is not None else "-")
        )
        voice = "voice" if avatar.voice_audio is not None else "-"
        detail = f"  {avatar.error}" if avatar.error else ""
        print(f"{avatar.id}  {avatar.status:9s}  {length:8s}  {voice:5s}  {avatar.name}{detail}")
    if not found:
        print("no avatars yet; add one with: python -m heygem avatars add NAME FILE", file=sys.stderr)
    return EXIT_OK


def _avatars_rm(args: argparse.Namespace, settings: Settings) -> int:
    from heygem.jobs.avatars import AvatarBook
    from heygem.jobs.tenancy import LOCAL

    with _AvatarStore(settings) as store:
        AvatarBook(settings, store, _local_file, lambda avatar: None).delete(args.id, principal=LOCAL)
    print(f"deleted avatar {args.id}")
    return EXIT_OK


def _add_models(commands) -> None:
    models = commands.add_parser("models", help="weights: status, download, verify")
    models.add_argument("action", choices=("status", "download", "verify"))
    models.set_defaults(handler=_models)


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from heygem.engine.model import download

    if args.action == "download":
        for path in download.download_weights(settings):
            print(f"ready: {path}")
        return EXIT_OK
    if args.action == "verify":
        return _verify_models(settings)
    for status in download.weights_status(settings):
        state = f"present ({status.size_bytes / 2**20:.1f} MiB)" if status.present else "missing"
        print(f"{status.name:10s} {state:24s} {status.path}")
    return EXIT_OK


def _verify_models(settings: Settings) -> int:
    from heygem.engine.model import download, load_checkpoint

    checkpoint = download.resolve_checkpoint(settings)
    load_checkpoint(checkpoint, "cpu")
    print(f"ok: {checkpoint} loads into the Wav2Lip generator")
    if settings.checkpoint_sha256:
        from heygem.engine.model.checkpoint import verify_file

        verify_file(checkpoint, settings.checkpoint_sha256)
        print(f"ok: {checkpoint} matches the expected SHA-256")
    _report_backend(settings)
    return EXIT_OK


def _report_backend(settings: Settings) -> None:
    """Load the engine as a job would and say which backend runs and how far it is from fp32."""
    from heygem.engine.faces.detect import S3FD_DRIFT_BOUND, detector_label, shared_detector
    from heygem.engine.model.backends import DRIFT_BOUND
    from heygem.engine.pipeline import LipSyncPipeline

    engine_settings = settings.replace(engine="wav2lip", warmup=False)
    status = LipSyncPipeline(engine_settings).status()
    print(
        f"ok: generator backend {status.backend} on {status.device} (default bound: {DRIFT_BOUND} grey level)"
    )
    # The engine loaded this detector: shared_detector hands back that same one.
    detector = detector_label(shared_detector(engine_settings, status.device))
    print(f"ok: face detector {detector} (default bound for openvino: {S3FD_DRIFT_BOUND} pixel)")


def _add_keys(commands) -> None:
    keys = commands.add_parser("keys", help="API keys and UI users: add one")
    actions = keys.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="make a new API key for a tenant; it is printed once")
    add.add_argument("tenant", help="tenant (department) the key belongs to")
    add.add_argument(
        "--role",
        choices=("user", "admin"),
        default="user",
        help="admin sees every tenant's jobs and the service log (default: user)",
    )
    add.add_argument(
        "--file", type=Path, default=None, help="keys file to append to (default: HEYGEM_API_KEYS_FILE)"
    )
    add.set_defaults(handler=_keys_add)
    user = actions.add_parser(
        "add-user",
        help="add a web UI login; the password is read from stdin (or asked for twice on a terminal)",
    )
    user.add_argument("username")
    user.add_argument("tenant")
    user.add_argument("--role", choices=("user", "admin"), default="user")
    user.add_argument(
        "--file", type=Path, default=None, help="users file to append to (default: HEYGEM_USERS_FILE)"
    )
    user.set_defaults(handler=_keys_add_user)


def _keys_add(args: argparse.Namespace, settings: Settings) -> int:
    from heygem.web.identity import append_line, key_line, new_key

    path = _credentials_file(args.file, settings.api_keys_file, "--file or HEYGEM_API_KEYS_FILE")
    key = new_key()
    try:
        line = key_line(args.tenant, args.role, key)  # only the key's SHA-256 is stored
    except ValueError as exc:
        raise HeygemError(str(exc)) from None
    append_line(path, line)
    print(key)
    print(
        f"added a {args.role} key for tenant {args.tenant} to {path}; this is the only time the key is shown",
        file=sys.stderr,
    )
    return EXIT_OK


def _keys_add_user(args: argparse.Namespace, settings: Settings) -> int:
    from heygem.web.identity import append_line, user_line

    path = _credentials_file(args.file, settings.users_file, "--file or HEYGEM_USERS_FILE")
    password = _read_password()
    try:
        line = user_line(args.username, args.tenant, args.role, password)
    except ValueError as exc:
        raise HeygemError(str(exc)) from None
    append_line(path, line)
    print(f"added user {args.username} (tenant {args.tenant}, {args.role}) to {path}", file=sys.stderr)
    return EXIT_OK


def _credentials_file(given: Path | None, configured: Path | None, how: str) -> Path:
    path = given or configured
    if path is None:
        raise HeygemError(f"which file? give {how}")
    return path.expanduser()


def _read_password() -> str:
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise HeygemError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < MIN_PASSWORD_CHARS:
        raise HeygemError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    return password


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from heygem.web.server import serve

    settings.log_summary()
    return serve(settings)


class _StageBars:
    """One tqdm bar per pipeline stage, fed by the pipeline's (done, total, stage) callback."""

    def __init__(self, factory: Callable[..., Any] | None = None) -> None:
        if factory is None:
            from tqdm import tqdm

            factory = tqdm
        self._factory = factory
        self._bar: Any = None
        self._stage = ""

    def update(self, done: int, total: int, stage: str) -> None:
        if stage == "done":
            self._close()
            return
        if stage != self._stage:
            self._close()
            self._stage = stage
            # disable=None: no bar when stderr is not a terminal, where its carriage-return
            # redraws would clutter logs and come before the one-line error message.
            self._bar = self._factory(total=total, desc=stage, unit="frame", leave=False, disable=None)
        if self._bar is not None:
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> _StageBars:
        return self

    def __exit__(self, *exc) -> None:
        self._close()
