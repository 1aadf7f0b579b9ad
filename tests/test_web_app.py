"""How the app is put together: UI mount after the API, UI login, gateway prefixes, the starting page,
language choice, the log tail and the UI's error mapping. In-process, on the fake pipeline."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from heygem.errors import LimitExceededError, NoFaceError
from heygem.jobs.tenancy import LOCAL
from heygem.web import i18n
from heygem.web.identity import principal_of
from heygem.web.server import LogBuffer, PrefixTolerance, create_app
from tests.kit import FakePipeline, running_service, wait_until

PREFIX = "/v1/infers/0a1b2c"


@pytest.fixture
def service(settings, start_service):
    return start_service(settings, FakePipeline)


def test_api_routes_answer_before_the_ui_mounted_at_root(settings, service):
    with TestClient(create_app(settings, service)) as client:
        assert client.get("/health").json() == {"health": "true"}
        assert client.get("/api/v1/jobs").json()["total"] == 0
        assert client.get("/docs").status_code == 200
        page = client.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert client.get("/config").json()["version"]  # Gradio's own route, under "/"


def test_ui_requires_a_login_when_auth_is_set(settings, service, caplog):
    caplog.set_level(logging.INFO, logger="heygem")
    secured = settings.replace(auth="ann:s3cret-pw")
    with TestClient(create_app(secured, service)) as client:
        assert client.get("/config").status_code == 401
        assert client.post("/login", data={"username": "ann", "password": "nope"}).status_code == 400
        assert client.post("/login", data={"username": "ann", "password": "s3cret-pw"}).status_code == 200
        assert client.get("/config").status_code == 200
        assert client.get("/health").status_code == 200  # probes stay open
    assert "s3cret-pw" not in caplog.text


def test_the_starting_page_shows_until_the_ui_is_built(settings, service):
    app = create_app(settings, service, ui_in_background=True)
    with TestClient(app) as client:
        first = client.get("/")
        assert client.get("/health").status_code == 200
        wait_until(lambda: client.get("/").status_code == 200, 120, interval=0.2, message="the UI")
        assert client.get("/").status_code == 200
    # Gradio's import may already be cached in this process, so the first answer can be either.
    assert first.status_code in (200, 503)
    if first.status_code == 503:
        assert "starting" in first.text and first.headers["retry-after"]


@pytest.mark.parametrize("path", [f"{PREFIX}/health", f"{PREFIX}{PREFIX}/health"])
def test_gateway_prefix_works_whether_or_not_the_gateway_strips_it(settings, service, path):
    # uvicorn joins root_path and the request path: a stripping gateway yields PREFIX/health,
    # a non-stripping one PREFIX/PREFIX/health.
    app = PrefixTolerance(create_app(settings, service, ui=False), PREFIX)
    with TestClient(app, root_path=PREFIX) as client:
        assert client.get(path).json() == {"health": "true"}


def test_result_urls_carry_the_gateway_prefix(settings, service, speech_wav, face_video):
    app = PrefixTolerance(create_app(settings, service, ui=False), PREFIX)
    with (
        TestClient(app, root_path=PREFIX) as client,
        open(speech_wav, "rb") as a,
        open(face_video, "rb") as v,
    ):
        job = client.post(f"{PREFIX}/api/v1/jobs", files={"audio": a, "video": v}).json()
        service.wait(job["id"], 60, principal=LOCAL)
        done = client.get(f"{PREFIX}/api/v1/jobs/{job['id']}").json()
        assert done["result_url"] == f"{PREFIX}/api/v1/jobs/{job['id']}/result"
        assert client.get(done["result_url"]).status_code == 200


def test_jobs_survive_a_restart(settings, speech_wav, face_video):
    with (
        running_service(settings) as first,
        TestClient(create_app(settings, first, ui=False)) as client,
        open(speech_wav, "rb") as a,
        open(face_video, "rb") as v,
    ):
        job_id = client.post("/api/v1/jobs", files={"audio": a, "video": v}).json()["id"]
        first.wait(job_id, 60, principal=LOCAL)
    with running_service(settings) as second, TestClient(create_app(settings, second, ui=False)) as client:
        listed = client.get("/api/v1/jobs").json()["jobs"]
        assert [job["id"] for job in listed] == [job_id]
        assert client.get(listed[0]["result_url"]).status_code == 200


@pytest.mark.parametrize(
    "header,expected",
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
        ("fr-FR,zh-TW;q=0.5", "zh-CN"),
        ("de-DE", "en"),
        ("", "en"),
        ("en;q=0.1,zh;q=0.9", "zh-CN"),
    ],
)
def test_language_follows_accept_language(header, expected):
    assert i18n.pick_language(header) == expected


def test_both_languages_have_every_key():
    assert set(i18n.EN) == set(i18n.ZH)
    assert i18n.t("stage_detect", "zh-CN") == "检测人脸"
    assert i18n.t("batch_summary", "en", id="x", done=1, failed=0, total=2).startswith("Batch `x`")
    assert i18n.t("stage_", "en", default="") == ""


def test_log_buffer_keeps_only_the_latest_lines():
    buffer = LogBuffer(capacity=3)
    logger = logging.getLogger("heygem.test_web_app")
    logger.addHandler(buffer)
    try:
        for number in range(5):
            logger.warning("line %d", number)
    finally:
        logger.removeHandler(buffer)
    assert [line.rsplit(" ", 1)[-1] for line in buffer.tail(10)] == ["2", "3", "4"]


def test_ui_handlers_turn_errors_into_readable_messages(caplog):
    import gradio as gr

    from heygem.web.ui import user_errors

    @user_errors
    def no_face():
        raise NoFaceError("face.mp4: no face found in any frame")

    @user_errors
    def too_long():
        raise LimitExceededError("speech.wav is 700 s long; the limit is 600 s")

    @user_errors
    def broken():
        raise KeyError("internal detail /srv/x")

    with pytest.raises(gr.Error) as error:
        no_face()
    assert error.value.message == f"{i18n.t('title_bad_input')}: face.mp4: no face found in any frame"
    assert error.value.title == i18n.t("title_bad_input")
    with pytest.raises(gr.Error) as error:
        too_long()
    assert error.value.title == i18n.t("title_too_large")
    with pytest.raises(gr.Error) as error:
        broken()
    assert error.value.message == i18n.t("err_internal") and "/srv/x" not in error.value.message
    assert "internal detail /srv/x" in caplog.text


class PreviewPipeline(FakePipeline):
    """Reports what the real engine reports when no neural weights are installed."""

    def status(self):
        status = super().status()
        status.engine, status.reason = "preview", "no weights at models/wav2lip_gan.pth"
        return status


def test_system_panel_explains_how_to_get_the_weights_in_preview_mode(settings):
    import gradio as gr

    from heygem.web.ui import Handlers

    with running_service(settings, PreviewPipeline) as service:
        wait_until(lambda: service.readiness()[0], message="the service to be ready")
        buffer = LogBuffer()
        buffer.emit(logging.LogRecord("heygem.x", logging.INFO, __file__, 1, "hello log", (), None))
        admin = gr.Request(username="default:admin", headers={})  # as the identity gate names it
        status, log_tail = Handlers(settings, service, buffer.tail).system(admin)
    assert "**engine**: preview" in status and "no weights at models/wav2lip_gan.pth" in status
    assert "python -m heygem models download" in status
    assert "Jobs waiting: 0" in status
    assert log_tail.endswith("hello log")


class OpenVinoPipeline(FakePipeline):
    def status(self):
        status = super().status()
        status.backend = "openvino bf16, 1 grey level(s) from fp32 eager"
        return status


def test_system_panel_names_the_generator_backend_and_its_drift(settings):
    import gradio as gr

    from heygem.web.ui import Handlers

    with running_service(settings, OpenVinoPipeline) as service:
        wait_until(lambda: service.readiness()[0], message="the service to be ready")
        admin = gr.Request(username="default:admin", headers={})
        status, _log_tail = Handlers(settings, service, LogBuffer().tail).system(admin)
    assert "- **backend**: openvino bf16, 1 grey level(s) from fp32 eager" in status


def test_the_options_panel_is_built_from_the_schema_and_maps_back_to_fields():
    import gradio as gr

    from heygem.engine.api import SyncOptions, option_specs
    from heygem.errors import InputError
    from heygem.web.ui import OptionsPanel, build_options

    with gr.Blocks():
        panel = OptionsPanel(lambda key: key)
    # The inputs' names are the Gradio API's parameter names, in the order clients pass them.
    assert list(panel.kwargs) == [
        "engine",
        "pad_top",
        "pad_bottom",
        "pad_left",
        "pad_right",
        "smooth",
        "blend",
        "duration_policy",
        "face_choice",
        "face_x",
        "face_y",
        "watermark",
    ]
    untouched = {name: component.value for name, component in panel.kwargs.items()}
    assert SyncOptions.from_dict(build_options(panel.fields(untouched))) == SyncOptions()
    # the values are the schema's; the labels are translated (here: their i18n keys)
    assert panel.component("blend").choices == [(f"option_{c}", c) for c in option_specs()["blend"].choices]

    picked = dict(untouched, face_choice="nearest", face_x=120.0, face_y=80.0, pad_top=None)
    options = build_options(panel.fields(picked))
    assert options["face_point"] == [120, 80] and options["pads"] == [0, 10, 0, 0]
    with pytest.raises(InputError, match="choose the face"):
        build_options(panel.fields(dict(untouched, face_choice="nearest", face_x=5.0)))
    # A point without the "nearest" choice is not sent, as before.
    assert "face_point" not in build_options(panel.fields(dict(untouched, face_x=5.0, face_y=6.0)))


@pytest.mark.parametrize("path", [PREFIX, f"{PREFIX}{PREFIX}"])
def test_the_identity_gate_sees_through_the_gateway_prefix(settings, service, path):
    app = PrefixTolerance(create_app(settings.replace(api_token="s3cret"), service, ui=False), PREFIX)
    with TestClient(app, root_path=PREFIX) as client:
        assert client.get(f"{path}/health").status_code == 200
        assert client.get(f"{path}/api/v1/jobs").status_code == 401
        assert client.get(f"{path}/ready?deep=1").status_code == 401
        jobs = client.get(f"{path}/api/v1/jobs", headers={"Authorization": "Bearer s3cret"})
        assert jobs.status_code == 200


# --------------------------------------------------------------------------------------------------
# Avatars and typed text in the UI handlers (the page itself is tested in test_ui_avatars_browser)

AVATAR_READY_S = 60.0


def _as(tenant: str, role: str = "user", language: str = "en"):
    import gradio as gr

    # As the identity gate names a principal for Gradio: "tenant:role".
    return gr.Request(username=f"{tenant}:{role}", headers={"accept-language": language})


def _ready(handlers, request, avatar_id: str):
    def settled():
        avatar = handlers.service.get_avatar(avatar_id, principal=principal_of(request))
        return avatar if avatar.status != "preparing" else None

    return wait_until(settled, AVATAR_READY_S, interval=0.1, message=f"avatar {avatar_id} to be prepared")


def _picker_choices(update) -> list[tuple[str, str]]:
    return [tuple(choice) for choice in update["choices"]]


def test_avatars_in_the_ui_belong_to_the_tenant(settings, service, face_video):
    import gradio as gr

    from heygem.web.ui import Handlers

    handlers = Handlers(settings, service, lambda count: [])
    ann, bob = _as("sales"), _as("support")
    created = handlers.create_avatar(str(face_video), "  Anna  ", None, None, "", "", ann)
    avatar_id, name, ids, _, details = created[:5]
    assert name == "Anna" and ids == [avatar_id] and "**Anna**" in details
    assert _ready(handlers, ann, avatar_id).status == "ready"

    ids, gallery, details, single, _, timer = handlers.avatar_listing(avatar_id, "", "", ann)
    assert ids == [avatar_id] and gallery[0][1] == "Anna · ready"
    assert "**Status**: ready" in details  # the shown details follow the preparation
    assert _picker_choices(single)[1:] == [("Anna", avatar_id)] and single["value"] == ""
    assert timer.active is False  # nothing preparing: the Avatars tab stops refreshing
    # Another department sees none of it, and cannot rename or delete it.
    theirs = handlers.avatar_listing(avatar_id, avatar_id, avatar_id, bob)
    assert theirs[0] == [] and theirs[2] == "" and theirs[3]["value"] == ""
    # (the Avatars tab's errors are a note by its buttons, its last output; the rest is kept)
    refused = handlers.rename_avatar(avatar_id, "Mine now", "", "", bob)
    assert "avatar" in refused[-1] and "heygem-error" in refused[-1]
    assert all(value == gr.skip() for value in refused[:-1])
    assert "avatar" in handlers.delete_avatar(avatar_id, "", "", bob)[-1]

    renamed = handlers.rename_avatar(avatar_id, "Anna B.", avatar_id, "", ann)
    assert renamed[1] == "Anna B." and renamed[2] == [avatar_id] and "**Anna B.**" in renamed[4]
    assert renamed[5]["value"] == avatar_id  # the Single picker keeps its choice
    deleted = handlers.delete_avatar(avatar_id, avatar_id, avatar_id, ann)
    assert deleted[:5] == (None, "", [], [], "")
    assert deleted[5]["value"] == "" and deleted[6]["value"] == ""  # the choice is gone
    assert "Anna B." in deleted[-1] and "heygem-error" not in deleted[-1]  # it says what it removed
    assert service.list_avatars(principal=principal_of(ann)) == []


def test_avatar_form_errors_are_readable_and_translated(settings, service, face_video, speech_wav):
    from heygem.web.ui import Handlers

    handlers = Handlers(settings, service, lambda count: [])
    note = handlers.create_avatar(str(face_video), "  ", None, None, "", "", _as("sales"))[-1]
    assert "Please give the avatar a name" in note
    zh = _as("sales", language="zh-CN")
    assert (
        "请填写声音样本中所说的内容"
        in handlers.create_avatar(str(face_video), "Anna", str(speech_wav), " ", "", "", zh)[-1]
    )
    assert "Select an avatar" in handlers.delete_avatar(None, "", "", _as("sales"))[-1]
    assert handlers.avatar_listing(None, "", "", _as("sales"))[0] == []  # nothing was created


def test_single_tab_generates_from_typed_text_on_an_avatar(settings, service, face_video):
    import gradio as gr

    from heygem.web.ui import Handlers, build_options

    handlers = Handlers(settings, service, lambda count: [])
    ann = _as("sales")
    avatar_id = handlers.create_avatar(str(face_video), "Anna", None, None, "", "", ann)[0]
    _ready(handlers, ann, avatar_id)
    fields: dict = {}
    with pytest.raises(gr.Error, match="either a speech audio or text"):
        handlers.generate("x.wav", None, fields, ann, lambda *a, **k: None, avatar=avatar_id, text="Hello")
    with pytest.raises(gr.Error, match="speech audio or type the text"):
        handlers.generate(None, None, fields, ann, lambda *a, **k: None, avatar=avatar_id, text=" ")
    video, _, summary = handlers.generate(
        None,
        None,
        build_options({}),
        ann,
        lambda *a, **k: None,
        avatar=avatar_id,
        text="Hello from the avatar.",
    )
    assert summary.startswith("Done") and video.endswith(".mp4")
    job = service.list_jobs(principal=principal_of(ann))[0]
    assert job.text == "Hello from the avatar." and job.video == f"avatar:{avatar_id}"
    # Another department cannot use the avatar by its id.
    with pytest.raises(gr.Error):
        handlers.generate(
            None, None, {}, _as("support"), lambda *a, **k: None, avatar=avatar_id, text="Hello"
        )
    # The Batch tab: lines of text on the picked avatar, one job per line.
    # The Batch tab's errors go to the note by its Run button (its last output), not a toast.
    refused = handlers.submit_batch(["x.wav"], None, None, {}, ann, avatar=avatar_id, texts="One.")
    assert "either a speech audio or text" in refused[-1] and "heygem-error" in refused[-1]
    batch_id = handlers.submit_batch(
        None, None, None, {}, ann, avatar=avatar_id, texts="First line.\n\n  Second line.  \n"
    )[0]
    batch = service.get_batch(batch_id, principal=principal_of(ann))
    assert [(item.text, item.video) for item in batch.items] == [
        ("First line.", f"avatar:{avatar_id}"),
        ("Second line.", f"avatar:{avatar_id}"),
    ]


def test_hear_it_returns_the_spoken_text_as_samples(settings, service):
    import gradio as gr

    from heygem.web.ui import Handlers

    handlers = Handlers(settings, service, lambda count: [])
    rate, samples = handlers.hear_it("Hello there.", "en", "", _as("sales"))
    assert rate > 8000 and len(samples) > rate // 4 and abs(samples).max() > 1000
    with pytest.raises(gr.Error, match="type the text"):
        handlers.hear_it("   ", None, "", _as("sales"))


def test_batch_texts_pair_with_faces():
    from heygem.errors import InputError
    from heygem.web.ui import pair_texts

    assert pair_texts(["a", "b"], ["avatar:1"]) == [
        {"text": "a", "video": "avatar:1"},
        {"text": "b", "video": "avatar:1"},
    ]
    assert [item["video"] for item in pair_texts(["a"], ["x.mp4", "avatar:1"])] == ["x.mp4", "avatar:1"]
    assert [item["text"] for item in pair_texts(["a", "b"], ["x", "y"])] == ["a", "b"]
    with pytest.raises(InputError, match="3 lines of text for 2 faces"):
        pair_texts(["a", "b", "c"], ["x", "y"])
    with pytest.raises(InputError, match="at least one face"):
        pair_texts(["a"], [])


def test_the_studio_doors_show_nothing_of_another_department(settings, service, speech_wav, face_video):
    """?job=, ?batch=, Cancel, Reuse and "Open its batch" read through the caller's principal:
    another department's ids are "not here", with nothing of the job shown."""
    import shutil

    from heygem.web.ui import Handlers

    handlers = Handlers(settings, service, lambda count: [])
    folder = settings.inputs_dir / "0123456789abcdef0123456789abcdef"
    folder.mkdir(parents=True)
    audio, video = shutil.copy(speech_wav, folder), shutil.copy(face_video, folder)
    batch = service.submit_batch(
        [{"audio": audio, "video": video}], principal=principal_of(_as("sales")), uploaded=[folder]
    )
    job_id = batch.items[0].id
    spy = _as("support")
    video_out, download, summary, note = handlers.follow_job(job_id, spy, lambda *a, **k: None)
    assert "not here" in note and job_id not in str((video_out, download, summary))
    assert "not here" in handlers.open_batch(batch.id, spy)[-1]
    assert "heygem-error" in handlers.cancel_single(job_id, spy)
    assert "heygem-error" in handlers.reuse_inputs(job_id, spy)[-1]
    opened = handlers.open_job_batch(job_id, spy)
    assert "heygem-error" in opened[-1] and batch.id not in str(opened)
    assert service.get(job_id, principal=principal_of(_as("sales"))).status != "cancelled"
