"""Interface text in English and Simplified Chinese.

The page's static labels are translated in the browser by Gradio (gr.I18n built from TRANSLATIONS
in ui.py). Text made at run time (progress, status, error titles) goes through `t`, in the language
`pick_language` reads from the request's Accept-Language header. Plain data: no gradio import.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("heygem.web.i18n")

DEFAULT_LANGUAGE = "en"
CHINESE = "zh-CN"

EN: dict[str, str] = {
    # page
    "title": "# heygem\nSpeech audio + a face video or photo in, a lip-synced video out.",
    "banner_starting": "⏳ Starting up…",
    "banner_loading": (
        "⏳ **The model is loading** ({reason}). You can submit jobs now; they start as soon as it is ready."
    ),
    "tab_single": "Single",
    "tab_batch": "Batch",
    "tab_history": "History",
    "tab_system": "System",
    "refresh": "Refresh",
    "download": "Download",
    # options
    "options": "Options",
    "engine": "Engine",
    "engine_info": "auto uses the neural model when its weights are installed, else the preview engine",
    "blend": "Blend",
    "blend_info": "feather: soft edge around the mouth; rect: paste the whole face box",
    "duration_policy": "When the audio is longer than the video",
    "duration_policy_info": "loop: start the video again; pingpong: play it backwards and forwards",
    "pad_top": "Pad top (px)",
    "pad_bottom": "Pad bottom (px)",
    "pad_left": "Pad left (px)",
    "pad_right": "Pad right (px)",
    "smooth": "Smooth the face box",
    "smooth_info": "average the box over a few frames to stop jitter",
    "face_choice": "Which face",
    "face_choice_info": "largest, or the one nearest to a point (click it in the face check picture)",
    "face_x": "Point x",
    "face_y": "Point y",
    "watermark": "Watermark",
    "watermark_hint": "e.g. AI generated (empty = none)",
    # single
    "audio": "Speech audio (upload or record)",
    "face": "Face video or photo",
    "check_face": "Check face",
    "generate": "Generate",
    "face_preview": "Face check (first frame)",
    "face_found": "Face found: {w}×{h} px at x={x}, y={y}.",
    "face_none": "No face found in the first frame. Try another video, or set the face point.",
    "result": "Result",
    "done_summary": "Done: job `{id}`, engine **{engine}**, {seconds} s, frames without a face: {noface}.",
    "progress_queued": "Waiting in the queue ({ahead} queued)",
    # batch
    "batch_help": (
        "Give **one audio and many videos**, **as many audios as videos** (paired in order), or "
        'a **JSONL manifest** (one `{"audio": ..., "video": ..., "output_name": ...}` per line; '
        "names of files uploaded here may be used)."
    ),
    "batch_audio": "Audio file(s)",
    "batch_videos": "Face videos or photos",
    "batch_manifest": "Manifest (JSONL, optional)",
    "batch_run": "Run batch",
    "batch_table": "Items",
    "batch_gallery": "Results",
    "batch_zip": "Download all as ZIP",
    "batch_retry": "Retry failed",
    "batch_zip_file": "ZIP",
    "batch_summary": "Batch `{id}`: {done} of {total} done, {failed} failed.",
    "col_item": "#",
    "col_video": "Video",
    "col_status": "Status",
    "col_progress": "Progress",
    "col_stage": "Stage",
    "col_error": "Error",
    "err_no_batch": "Run a batch first.",
    # history
    "history_prev": "◀ Newer",
    "history_next": "Older ▶",
    "history_page": "Page {page} of {pages} ({total} jobs)",
    "history_gallery": "Past jobs (newest first)",
    "history_preview": "Preview",
    "history_delete": "Delete selected",
    "history_delete_all": "Delete all…",
    "history_confirm": "Delete **every** job and its files? This cannot be undone.",
    "history_confirm_yes": "Yes, delete all",
    "history_confirm_no": "Cancel",
    "history_details": (
        "**Job** `{id}`  \n**Status**: {status}  \n**Created**: {created}  \n**Engine**: {engine}  "
        "\n**Error**: {error}"
    ),
    "history_deleted_all": "{count} jobs deleted.",
    "err_no_selection": "Select a job in the list first.",
    # system
    "system_engine": "Engine and weights",
    "system_loading": "The engine is still loading: {reason}",
    "system_preview_notice": (
        "⚠️ The **preview** engine is running: the neural lip-sync weights are not installed, so "
        "mouths are only approximated. Fetch them with `python -m heygem models download` (or "
        "place `wav2lip_gan.pth` and `s3fd.pth` in the models folder) and restart."
    ),
    "system_queue": "Service",
    "system_ready": "Ready ({reason})",
    "system_not_ready": "Not ready: {reason}",
    "system_queue_depth": "Jobs waiting: {count}",
    "system_jobs_total": "Jobs in history: {count}",
    "system_log": "Service log (latest lines)",
    "system_log_admins_only": "The service log is shown to admins only.",
    "system_settings": "Settings (secrets hidden)",
    # avatars
    "tab_avatars": "Avatars",
    "avatars_help": (
        "An **avatar** is a face video or photo you upload once: it is prepared (face found, "
        "thumbnail made) and then picked on the Single and Batch tabs. Add a short voice sample and "
        "what is said in it to speak typed text in that voice (with a voice-cloning provider)."
    ),
    "avatar_media": "Face video or photo",
    "avatar_name": "Name",
    "avatar_name_hint": "e.g. Anna, studio",
    "avatar_voice": "Voice sample (optional)",
    "avatar_voice_text": "What is said in the voice sample",
    "avatar_voice_text_hint": "the exact words of the sample, needed for voice cloning",
    "avatar_create": "Create avatar",
    "avatar_gallery": "Avatars (newest first)",
    "avatar_details": (
        "**{name}** (`{id}`)  \n**Status**: {status}  \n**Created**: {created}  \n"
        "**Length**: {length}  \n**Voice sample**: {voice}  \n**Error**: {error}"
    ),
    "avatar_photo": "photo",
    "avatar_voice_none": "none",
    "avatar_voice_yes": "yes",
    "avatar_new_name": "New name",
    "avatar_rename": "Rename",
    "avatar_delete": "Delete avatar",
    "avatar_deleted": 'Avatar "{name}" deleted.',
    "avatar_status_preparing": "preparing",
    "avatar_status_ready": "ready",
    "avatar_status_failed": "failed",
    "avatar_pick": "Avatar",
    "avatar_pick_info": "a prepared avatar, instead of uploading a face",
    "avatar_none": "(none: use the uploaded face)",
    "avatar_chosen": "Avatar **{name}** ({status}).",
    "err_need_avatar_name": "Please give the avatar a name.",
    "err_need_avatar_media": "Please add the avatar's face video or photo.",
    "err_no_avatar_selected": "Select an avatar in the gallery first.",
    "err_voice_text": "Please add what is said in the voice sample (its transcript).",
    # text to speech
    "speech_text": "…or type the text to speak",
    "speech_text_hint": "Typed text is spoken by the voice below instead of an audio file.",
    "speech_voice": "Voice",
    "speech_voice_info": "voices of the speech provider; empty = its default (or the avatar's voice)",
    "hear_it": "Hear it",
    "hear_it_audio": "Speech preview",
    "speech_robotic": (
        "ℹ️ The built-in voice (espeak-ng) works offline but sounds **robotic**. For natural or "
        "cloned voices set `HEYGEM_TTS_PROVIDER` (`openai` or `fish`) and `HEYGEM_TTS_URL`; see "
        "`docs/speech.md`."
    ),
    "speech_provider": "ℹ️ Speech provider: **{provider}** (see `docs/speech.md`).",
    "err_need_speech": "Please add the speech audio or type the text to speak.",
    "err_audio_and_text": "Give either a speech audio or text to speak, not both.",
    "err_need_text": "Please type the text to speak first.",
    "batch_texts": "…or texts to speak (one per line, instead of audio)",
    "batch_texts_hint": "One line per video, or many lines for one video or avatar.",
    "stage_speech": "Speaking the text",
    # statuses and stages
    "status_queued": "queued",
    "status_running": "running",
    "status_succeeded": "succeeded",
    "status_failed": "failed",
    "status_cancelled": "cancelled",
    "stage_probe": "Checking the files",
    "stage_audio": "Reading the audio",
    "stage_detect": "Finding the face",
    "stage_synthesize": "Synthesizing the lips",
    "stage_encode": "Encoding the video",
    "stage_done": "Done",
    # errors
    "title_bad_input": "Please check your input",
    "title_too_large": "Too large or too long",
    "title_busy": "The queue is full",
    "title_stopping": "The server is shutting down",
    "title_failed": "The job failed",
    "err_internal": "Something went wrong on the server. The details are in the service log.",
    "err_need_face": "Please add a face video or photo first.",
    # studio: reload, cancel, notes, history search (issue 16)
    "cancel_job": "Cancel job",
    "note_submitted": "Job `{id}` submitted. This page's address now leads back to it.",
    "note_cancelling": "Cancelling job `{id}`…",
    "note_cancelled": "Job `{id}` was cancelled.",
    "note_no_job": "There is no running job to cancel.",
    "note_failed": "Job `{id}` failed: {reason}",
    "note_not_found": "That job is not here any more (deleted, expired, or not yours).",
    "note_batch_not_found": "That batch is not here any more (deleted, expired, or not yours).",
    "note_speech_short": "The speech is only {seconds:.1f} s long: the video will be very short.",
    "note_speech_silent": "The speech seems silent: the mouth will hardly move.",
    "note_speech_ok": "Speech: {seconds:.1f} s.",
    "limits": "Limits: files up to {mb} MB, speech and video up to {seconds:g} s.",
    "eta": "about {seconds} s left",
    "eta_queued": "{ahead} ahead; starts in about {seconds} s",
    "preview_banner": (
        "⚠️ **Preview engine**: the neural lip-sync weights are not installed, so mouths are only "
        "approximated. Results are labelled *preview*. See the System tab."
    ),
    "preview_label": "preview engine: mouth approximated, not the neural model",
    "col_audio": "Audio",
    "col_output": "Output",
    "history_search": "Search (name, input, id)",
    "history_status": "Status",
    "status_all": "all",
    "history_cancel": "Cancel selected",
    "history_reuse": "Reuse these inputs",
    "history_open_batch": "Open its batch",
    "history_confirm_one": "Delete job `{id}` and its files? This cannot be undone.",
    "history_deleted": "Deleted job `{id}` and its files.",
    "history_expires": "expires {date}",
    "history_kept": "kept until deleted",
    "history_inputs": "**Audio**: {audio}  \n**Face**: {video}  \n**Text**: {text}  \n**Options**: {options}",
    "history_batch": "**Batch**: `{batch}` (item {item})",
    "history_expiry": "**Expires**: {date}",
    "reused": "The inputs of job `{id}` are on the Single tab.",
    "reuse_missing": "The uploaded files of job `{id}` are gone; its text and options were reused.",
    "api_docs": "Use via API (/docs)",
    "speech_video": "…or a video whose sound is the speech",
    "err_two_speeches": "Give either a speech audio or a speech video, not both.",
    "history_confirm_yes_one": "Yes, delete it",
    "err_not_batch": "This job is not part of a batch.",
    "upload_audio_name": "Upload speech audio",
    "upload_face_name": "Upload face video or photo",
    "upload_batch_audio_name": "Upload batch audio files",
    "upload_batch_videos_name": "Upload batch face files",
    "upload_manifest_name": "Upload batch manifest",
    "upload_avatar_name": "Upload avatar face",
    "upload_avatar_voice_name": "Upload avatar voice sample",
    # back-end messages, as the UI says them: the fix named by its control, not a CLI flag
    "msg_no_face": "no face found in {name}: set the face point in Options (Which face: nearest, then click the face in the face check picture), or use a clearer frontal video",
    "msg_file_not_found": "{kind} file not found: {name}",
    "msg_too_long": "{name} is {seconds} s long; the limit is {limit} s",
    "option_auto": "auto",
    "option_wav2lip": "neural (wav2lip)",
    "option_preview": "preview",
    "option_feather": "feather",
    "option_rect": "rectangle",
    "option_loop": "loop",
    "option_pingpong": "ping-pong",
    "option_largest": "largest",
    "option_nearest": "nearest to a point",
}

ZH: dict[str, str] = {
    "title": "# heygem\n输入语音和一段人脸视频或照片，生成口型同步的视频。",
    "banner_starting": "⏳ 正在启动……",
    "banner_loading": ("⏳ **模型正在加载**（{reason}）。现在即可提交任务，模型就绪后会自动开始。"),
    "tab_single": "单个任务",
    "tab_batch": "批量任务",
    "tab_history": "历史记录",
    "tab_system": "系统",
    "refresh": "刷新",
    "download": "下载",
    "options": "选项",
    "engine": "引擎",
    "engine_info": "auto：已安装神经网络权重时使用模型，否则使用预览引擎",
    "blend": "融合方式",
    "blend_info": "feather：嘴部周围柔和过渡；rect：整块粘贴人脸框",
    "duration_policy": "音频比视频长时",
    "duration_policy_info": "loop：从头循环播放视频；pingpong：正放倒放交替",
    "pad_top": "上边距（像素）",
    "pad_bottom": "下边距（像素）",
    "pad_left": "左边距（像素）",
    "pad_right": "右边距（像素）",
    "smooth": "平滑人脸框",
    "smooth_info": "在相邻几帧之间平均人脸框，减少抖动",
    "face_choice": "选择哪张脸",
    "face_choice_info": "最大的脸，或离某点最近的脸（在人脸检查图上点击）",
    "face_x": "点 x",
    "face_y": "点 y",
    "watermark": "水印",
    "watermark_hint": "例如：AI 生成（留空表示不加）",
    "audio": "语音音频（上传或录音）",
    "face": "人脸视频或照片",
    "check_face": "检查人脸",
    "generate": "生成",
    "face_preview": "人脸检查（第一帧）",
    "face_found": "已找到人脸：{w}×{h} 像素，位置 x={x}，y={y}。",
    "face_none": "第一帧中没有找到人脸。请换一个视频，或指定人脸位置。",
    "result": "结果",
    "done_summary": ("完成：任务 `{id}`，引擎 **{engine}**，用时 {seconds} 秒，无人脸帧数：{noface}。"),
    "progress_queued": "排队中（队列中有 {ahead} 个任务）",
    "batch_help": (
        '可以提供**一个音频和多个视频**、**数量相同的音频和视频**（按顺序配对），或一个 **JSONL 清单**（每行一个 `{"audio": ..., "video": '
        '..., "output_name": ...}`，可直接使用在此上传的文件名）。'
    ),
    "batch_audio": "音频文件",
    "batch_videos": "人脸视频或照片",
    "batch_manifest": "清单（JSONL，可选）",
    "batch_run": "开始批量生成",
    "batch_table": "任务列表",
    "batch_gallery": "生成结果",
    "batch_zip": "全部下载（ZIP）",
    "batch_retry": "重试失败的任务",
    "batch_zip_file": "ZIP 文件",
    "batch_summary": "批次 `{id}`：共 {total} 个，已完成 {done} 个，失败 {failed} 个。",
    "col_item": "序号",
    "col_video": "视频",
    "col_status": "状态",
    "col_progress": "进度",
    "col_stage": "阶段",
    "col_error": "错误",
    "err_no_batch": "请先运行一个批次。",
    "history_prev": "◀ 较新",
    "history_next": "较旧 ▶",
    "history_page": "第 {page} / {pages} 页（共 {total} 个任务）",
    "history_gallery": "历史任务（最新在前）",
    "history_preview": "预览",
    "history_delete": "删除所选",
    "history_delete_all": "全部删除……",
    "history_confirm": "确定删除**所有**任务及其文件吗？此操作无法撤销。",
    "history_confirm_yes": "确定，全部删除",
    "history_confirm_no": "取消",
    "history_details": (
        "**任务** `{id}`  \n**状态**：{status}  \n**创建时间**：{created}  \n**引擎**：{engine}  \n**错误**：{error}"
    ),
    "history_deleted_all": "已删除 {count} 个任务。",
    "err_no_selection": "请先在列表中选择一个任务。",
    "system_engine": "引擎与权重",
    "system_loading": "引擎仍在加载：{reason}",
    "system_preview_notice": (
        "⚠️ 当前运行的是**预览**引擎：未安装神经网络口型权重，口型只是近似效果。请运行 `python -m heygem models download` 下载权重（或将 "
        "`wav2lip_gan.pth` 和 `s3fd.pth` 放入 models 目录），然后重启。"
    ),
    "system_queue": "服务状态",
    "system_ready": "已就绪（{reason}）",
    "system_not_ready": "未就绪：{reason}",
    "system_queue_depth": "等待中的任务：{count}",
    "system_jobs_total": "历史任务数：{count}",
    "system_log": "服务日志（最新）",
    "system_log_admins_only": "服务日志仅对管理员显示。",
    "system_settings": "配置（已隐藏密钥）",
    "tab_avatars": "数字人",
    "avatars_help": (
        "**数字人**是只需上传一次的人脸视频或照片：系统会预先处理（检测人脸、生成缩略图），之后可在“单个任务”和“批量任务”中直接选用。"
        "添加一段简短的声音样本及其文字内容，即可（配合声音克隆服务）用此人的声音朗读输入的文字。"
    ),
    "avatar_media": "人脸视频或照片",
    "avatar_name": "名称",
    "avatar_name_hint": "例如：小安、演播室",
    "avatar_voice": "声音样本（可选）",
    "avatar_voice_text": "声音样本中所说的内容",
    "avatar_voice_text_hint": "样本中的原话，声音克隆需要",
    "avatar_create": "创建数字人",
    "avatar_gallery": "数字人（最新在前）",
    "avatar_details": (
        "**{name}**（`{id}`）  \n**状态**：{status}  \n**创建时间**：{created}  \n"
        "**时长**：{length}  \n**声音样本**：{voice}  \n**错误**：{error}"
    ),
    "avatar_photo": "照片",
    "avatar_voice_none": "无",
    "avatar_voice_yes": "有",
    "avatar_new_name": "新名称",
    "avatar_rename": "重命名",
    "avatar_delete": "删除数字人",
    "avatar_deleted": "已删除数字人“{name}”。",
    "avatar_status_preparing": "准备中",
    "avatar_status_ready": "就绪",
    "avatar_status_failed": "失败",
    "avatar_pick": "数字人",
    "avatar_pick_info": "选用已准备好的数字人，无需上传人脸",
    "avatar_none": "（不使用：使用上传的人脸）",
    "avatar_chosen": "数字人 **{name}**（{status}）。",
    "err_need_avatar_name": "请为数字人填写名称。",
    "err_need_avatar_media": "请添加数字人的人脸视频或照片。",
    "err_no_avatar_selected": "请先在列表中选择一个数字人。",
    "err_voice_text": "请填写声音样本中所说的内容（文字稿）。",
    "speech_text": "……或输入要朗读的文字",
    "speech_text_hint": "输入的文字将由下方选择的声音朗读，代替音频文件。",
    "speech_voice": "声音",
    "speech_voice_info": "语音服务提供的声音；留空则使用默认声音（或数字人的声音）",
    "hear_it": "试听",
    "hear_it_audio": "语音试听",
    "speech_robotic": (
        "ℹ️ 内置声音（espeak-ng）可离线使用，但听起来**比较机械**。如需自然或克隆的声音，请设置 `HEYGEM_TTS_PROVIDER`"
        "（`openai` 或 `fish`）和 `HEYGEM_TTS_URL`，详见 `docs/speech.md`。"
    ),
    "speech_provider": "ℹ️ 语音服务：**{provider}**（详见 `docs/speech.md`）。",
    "err_need_speech": "请添加语音音频，或输入要朗读的文字。",
    "err_audio_and_text": "请只提供语音音频或要朗读的文字中的一种。",
    "err_need_text": "请先输入要朗读的文字。",
    "batch_texts": "……或要朗读的文字（每行一条，代替音频）",
    "batch_texts_hint": "每个视频一行；或为一个视频或数字人写多行。",
    "stage_speech": "朗读文字",
    "status_queued": "排队中",
    "status_running": "运行中",
    "status_succeeded": "成功",
    "status_failed": "失败",
    "status_cancelled": "已取消",
    "stage_probe": "检查文件",
    "stage_audio": "读取音频",
    "stage_detect": "检测人脸",
    "stage_synthesize": "合成口型",
    "stage_encode": "编码视频",
    "stage_done": "完成",
    "title_bad_input": "请检查输入",
    "title_too_large": "文件过大或过长",
    "title_busy": "队列已满",
    "title_stopping": "服务正在关闭",
    "title_failed": "任务失败",
    "err_internal": "服务器出现错误，详情请查看服务日志。",
    "err_need_face": "请先添加人脸视频或照片。",
    # studio
    "cancel_job": "取消任务",
    "note_submitted": "任务 `{id}` 已提交。当前页面地址可随时回到该任务。",
    "note_cancelling": "正在取消任务 `{id}`……",
    "note_cancelled": "任务 `{id}` 已取消。",
    "note_no_job": "没有可取消的运行中任务。",
    "note_failed": "任务 `{id}` 失败：{reason}",
    "note_not_found": "该任务已不存在（已删除、已过期或不属于您）。",
    "note_batch_not_found": "该批量任务已不存在（已删除、已过期或不属于您）。",
    "note_speech_short": "语音只有 {seconds:.1f} 秒：生成的视频会很短。",
    "note_speech_silent": "语音似乎是静音的：嘴几乎不会动。",
    "note_speech_ok": "语音：{seconds:.1f} 秒。",
    "limits": "限制：文件不超过 {mb} MB，语音和视频不超过 {seconds:g} 秒。",
    "eta": "约剩 {seconds} 秒",
    "eta_queued": "前面还有 {ahead} 个；约 {seconds} 秒后开始",
    "preview_banner": "⚠️ **预览引擎**：未安装神经网络口型权重，嘴型只是近似效果。结果会标注 *预览*。详见“系统”页。",
    "preview_label": "预览引擎：嘴型为近似效果，并非神经网络模型",
    "col_audio": "音频",
    "col_output": "输出",
    "history_search": "搜索（名称、输入、编号）",
    "history_status": "状态",
    "status_all": "全部",
    "history_cancel": "取消所选任务",
    "history_reuse": "复用这些输入",
    "history_open_batch": "打开所属批量任务",
    "history_confirm_one": "删除任务 `{id}` 及其文件？此操作无法撤销。",
    "history_deleted": "已删除任务 `{id}` 及其文件。",
    "history_expires": "{date} 过期",
    "history_kept": "保留至手动删除",
    "history_inputs": "**音频**：{audio}  \n**人脸**：{video}  \n**文本**：{text}  \n**选项**：{options}",
    "history_batch": "**批量任务**：`{batch}`（第 {item} 项）",
    "history_expiry": "**过期时间**：{date}",
    "reused": "任务 `{id}` 的输入已填入“单个任务”页。",
    "reuse_missing": "任务 `{id}` 上传的文件已不存在；已复用其文本和选项。",
    "api_docs": "通过 API 使用（/docs）",
    "speech_video": "……或用一段视频的声音作为语音",
    "err_two_speeches": "请只提供语音音频或语音视频其中之一。",
    "history_confirm_yes_one": "确定删除",
    "err_not_batch": "该任务不属于批量任务。",
    "upload_audio_name": "上传语音音频",
    "upload_face_name": "上传人脸视频或照片",
    "upload_batch_audio_name": "上传批量音频文件",
    "upload_batch_videos_name": "上传批量人脸文件",
    "upload_manifest_name": "上传批量清单",
    "upload_avatar_name": "上传形象人脸",
    "upload_avatar_voice_name": "上传形象声音样本",
    "msg_no_face": "在 {name} 中没有找到人脸：请在“选项”中设置人脸位置（“哪张脸”选“离点最近”，然后在人脸检查图片中点击人脸），或换一段更清晰的正脸视频",
    "msg_file_not_found": "找不到{kind}文件：{name}",
    "msg_too_long": "{name} 长 {seconds} 秒；上限为 {limit} 秒",
    "option_auto": "自动",
    "option_wav2lip": "神经网络（wav2lip）",
    "option_preview": "预览",
    "option_feather": "羽化",
    "option_rect": "矩形",
    "option_loop": "循环",
    "option_pingpong": "往返播放",
    "option_largest": "最大的",
    "option_nearest": "离点最近的",
}

# Gradio's own translations use keys such as "audio" for nested tables: prefix ours in the browser.
BROWSER_PREFIX = "heygem_"


def _browser(table: dict[str, str]) -> dict[str, str]:
    return {BROWSER_PREFIX + key: text for key, text in table.items()}


# Keys of Gradio's own texts that its status tracker reads out and that are missing from its
# locale once a gr.I18n is given: without them screen readers hear the raw key.
GRADIO_KEYS = {"en": {"common.complete": "Complete"}, CHINESE: {"common.complete": "完成"}}

# Browsers report Chinese as zh-CN, zh-Hans, zh...: register the plain language code too.
TRANSLATIONS: dict[str, dict[str, str]] = {
    "en": {**GRADIO_KEYS["en"], **_browser(EN)},
    CHINESE: {**GRADIO_KEYS[CHINESE], **_browser(ZH)},
    "zh": {**GRADIO_KEYS[CHINESE], **_browser(ZH)},
}
_BY_LANGUAGE = {DEFAULT_LANGUAGE: EN, CHINESE: ZH}


def pick_language(accept_language: str) -> str:
    """The best of our languages for an Accept-Language header (highest q first)."""
    ranked = []
    for position, part in enumerate(accept_language.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        ranked.append((-quality, position, tag.strip().lower()))
    for _, _, tag in sorted(ranked):
        if tag.startswith("zh"):
            return CHINESE
        if tag.startswith("en"):
            return DEFAULT_LANGUAGE
    return DEFAULT_LANGUAGE


def t(key: str, language: str = DEFAULT_LANGUAGE, default: str | None = None, **values: object) -> str:
    """Text for `key` in `language` (English when missing), with {placeholders} filled in."""
    table = _BY_LANGUAGE.get(language, EN)
    text = table.get(key, EN.get(key))
    if text is None:
        return default if default is not None else key
    try:
        return text.format(**values) if values else text
    except (KeyError, IndexError):
        log.warning("translation %r is missing a value", key)
        return text


# Back-end messages the UI re-words: the engine and the job layer speak for the CLI and the API
# ("give --box"); the page names its own controls instead, in the user's language.
_BACKEND_MESSAGES = (
    (re.compile(r"no face found in (?P<name>.+?) \(checked \d+ frames?\).*--box"), "msg_no_face"),
    (re.compile(r"^(?P<kind>audio|video) file not found: (?P<name>.+)$"), "msg_file_not_found"),
    (
        re.compile(r"^(?P<name>.+) is (?P<seconds>[\d.]+) s long; the limit is (?P<limit>[\d.]+) s$"),
        "msg_too_long",
    ),
)


def backend_message(message: str, language: str = DEFAULT_LANGUAGE) -> str:
    """A back-end error message as the page shows it: known ones re-worded (and translated),
    any other unchanged. A prefix such as "item 3: " is kept."""
    prefix, rest = _split_item_prefix(message)
    for pattern, key in _BACKEND_MESSAGES:
        match = pattern.search(rest)
        if match:
            values = match.groupdict()
            if "kind" in values and language == CHINESE:
                values["kind"] = {"audio": "音频", "video": "视频"}[values["kind"]]
            return prefix + t(key, language, **values)
    return message


_ITEM_PREFIX = re.compile(r"^((?:item|manifest line) \d+: )")


def _split_item_prefix(message: str) -> tuple[str, str]:
    match = _ITEM_PREFIX.match(message)
    return (match.group(1), message[match.end() :]) if match else ("", message)
