"""Request and response bodies of the HTTP API (pydantic); validation names the field."""

from __future__ import annotations

from typing import Literal

from pydantic import (BaseModel, ConfigDict, Field, field_validator, model_serializer,
                      model_validator)

from emoverse.tasks import get_task
from emoverse.tasks.base import EMOTIONS, canonical_emotion


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Utterance(Body):
    """One turn of an ECPE conversation, with its (gold or predicted) emotion."""

    speaker: str = Field(min_length=1)
    text: str = Field(min_length=1)
    emotion: str

    @field_validator("emotion")
    @classmethod
    def _emotion(cls, value: str) -> str:
        emotion = canonical_emotion(value)
        if emotion is None:
            raise ValueError(f"unknown emotion {value!r}; one of {', '.join(EMOTIONS)}")
        return emotion  # the converters store canonical names, so the prompt matches


class TaskInput(Body):
    """What a task's prompt is built from (besides the video)."""

    task: str
    transcript: str | None = None
    conversation: list[Utterance] | None = None
    target_utterance: int | None = Field(None, ge=1)  # 1-based; None = the last turn

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        try:
            return get_task(value).name
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None

    @model_validator(mode="after")
    def _inputs_of_task(self) -> "TaskInput":
        task = get_task(self.task)
        if task.needs_conversation:
            if not self.conversation:
                raise ValueError(f"task {self.task} needs `conversation` (a list of {{speaker, "
                                 "text, emotion}})")
            if self.target_utterance is None:
                self.target_utterance = len(self.conversation)
            if self.target_utterance > len(self.conversation):
                raise ValueError(f"target_utterance {self.target_utterance} is beyond the "
                                 f"conversation's {len(self.conversation)} utterances")
        elif task.speech_in_prompt and not (self.transcript or "").strip():
            raise ValueError(f"task {self.task} needs `transcript` (what the person says)")
        return self

    def prompt(self) -> str:
        """The task's training prompt for these inputs (`Task.prompt`, nothing else)."""
        context = [u.model_dump() for u in self.conversation] if self.conversation else None
        return get_task(self.task).prompt(self.transcript or "", context, self.target_utterance)


class AnalyzeRequest(TaskInput):
    """`POST /v1/analyze` (JSON, or the same fields as multipart form fields)."""

    video_path: str | None = None  # under the media root; or upload the file as `video`
    video_start: float | None = Field(None, ge=0)  # seconds: analyse only this span
    video_end: float | None = Field(None, gt=0)
    model: str | None = None  # a served model id (or header serve_multiplexed_model_id)
    include_frames: bool = False  # answer with the face crops the model saw (JPEG data URLs)
    stream: bool = Field(False, description="refused: /v1/analyze answers whole; stream "
                         "from /v1/chat/completions")


class AnalyzeForm(BaseModel):
    """`POST /v1/analyze` as multipart/form-data: the same fields, the clip as file part
    `video` and the conversation as a JSON string (documentation of the form's shape)."""

    task: str
    transcript: str | None = None
    conversation: str | None = Field(None, description="JSON list of {speaker, text, emotion}")
    target_utterance: int | None = Field(None, ge=1)
    video: bytes | None = Field(None, json_schema_extra={"format": "binary"})
    video_path: str | None = None
    video_start: float | None = Field(None, ge=0)
    video_end: float | None = Field(None, gt=0)
    model: str | None = None
    include_frames: bool = False


class Pair(BaseModel):
    utterance: int
    emotion: str
    cause: int


class StructuredAnswer(BaseModel):
    """The parsed answer: `label` (MSA, MER), `labels` (FER facial actions), `text` and
    `emotion` (ERI), `pairs` (ECPE). Unset fields are left out."""

    label: str | None = None
    labels: list[str] | None = None
    text: str | None = None
    emotion: str | None = None
    pairs: list[Pair] | None = None

    @model_serializer(mode="wrap")
    def _only_set(self, handler) -> dict:
        return {k: v for k, v in handler(self).items() if v is not None}


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timing(BaseModel):
    media_ms: float  # decode, sample, detect, crop (0 when the clip was cached)
    model_ms: float  # waiting for and running the model deployment
    generate_ms: float  # the batch's generation on the replica
    batch_size: int  # requests generated together with this one
    total_ms: float


class AnalyzeResponse(BaseModel):
    task: str
    model: str
    answer: StructuredAnswer | None  # None when the raw text does not parse
    parse_error: str | None = None
    raw: str
    face_found: bool
    media_cached: bool
    usage: Usage
    timing: Timing
    frames: list[str] | None = None  # with include_frames: the crops, as JPEG data URLs


class ErrorDetail(BaseModel):
    field: str  # the input at fault
    message: str
    status: int


class ErrorBody(BaseModel):
    error: ErrorDetail


class VideoURL(BaseModel):
    url: str


class InputAudio(BaseModel):
    """OpenAI's `input_audio` part: base64-encoded audio of a container format."""

    data: str = Field(description="base64-encoded audio file")
    format: Literal["wav", "mp3"]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "video_url", "input_audio"]
    text: str | None = None
    video_url: VideoURL | None = None
    # heard instead of the video's own audio track, by a model that hears
    input_audio: InputAudio | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False  # a last chunk with `usage` and no choices


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions`: OpenAI's fields, plus emoverse's task inputs (send
    them with an OpenAI client's `extra_body`)."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients send many optional fields

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False  # server-sent events of chat.completion.chunk, then [DONE]
    stream_options: StreamOptions | None = None
    n: int = 1
    task: str | None = None
    conversation: list[Utterance] | None = None
    target_utterance: int | None = Field(None, ge=1)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "emoverse"
    kind: Literal["weights", "adapter"]
    base: str
    default: bool


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["ok"]
    default_model: str
    models: list[str]
    auth: bool  # whether /v1 needs an API key
    max_upload_mb: float


class Clip(BaseModel):
    path: str  # under the media root, as `video_path` takes it
    size: int  # bytes


class ClipList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Clip]
    truncated: bool  # more clips than page.max_listed_clips


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class EmoverseExtras(BaseModel):
    """What OpenAI's shape has no room for: the parsed answer and where the time went."""

    task: str | None
    answer: StructuredAnswer | None
    parse_error: str | None
    face_found: bool
    timing: Timing


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    emoverse: EmoverseExtras


class ChunkDelta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _only_set(self, handler) -> dict:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat (`data: {...}`); the stream ends with
    `data: [DONE]`. The last chunk with a finish_reason carries `emoverse`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    emoverse: EmoverseExtras | None = None
