"""An OpenAI-compatible judge stub on 127.0.0.1 for the tests of `eval win-rate` and `rank` (bounded, shut down by
the fixture that starts it)."""

from stub_server import StubServer


class StubJudge(StubServer):
    """An OpenAI-compatible `/chat/completions` ([`StubServer`]); a reply's body may be the assistant's text, which
    is wrapped as one chat choice. Answers `[[C]]` (a tie) unless `reply` is replaced; a 429 says `Retry-After: 0`."""

    def __init__(self):
        super().__init__(lambda request: (200, "[[C]]", 0.0))

    def payload(self, content) -> dict:
        if isinstance(content, str):
            return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
        return content

    def status_headers(self, status: int) -> dict:
        return {"Retry-After": "0"} if status == 429 else {}
