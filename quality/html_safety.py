"""HTML safety for the stewards' report: one Content-Security-Policy and an allowlist sanitiser.

Every page of the report carries ``CSP``: scripts only from the report's own files, no inline
script or event handler, no style attribute, nothing from another origin. starsmith's own pages
escape every value they write; great-expectations' pages are re-serialised by ``sanitize``, which
keeps only known elements and attributes (no script, style, footer, image, frame or form, no
``on*`` or ``style`` attribute, no link that leaves the report), so markup that reached GX's
output by any route is dropped or shown as text, never run.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from html.parser import HTMLParser

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'")
CSP_META = f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"

VOID = {"area", "br", "col", "hr", "img", "input", "wbr", "source", "track", "meta", "link",
        "base", "embed"}
# dropped with everything inside them
DROP_WITH_CONTENT = {"script", "style", "footer", "iframe", "frame", "frameset", "object",
                     "template", "noscript", "svg", "math", "title", "textarea", "select",
                     "button", "form", "canvas", "audio", "video", "applet"}
KEEP = {"a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd", "del",
        "div", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "input", "ins",
        "kbd", "label", "li", "mark", "nav", "ol", "p", "pre", "q", "s", "samp", "section",
        "small", "span", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead",
        "tr", "u", "ul", "main", "header", "article", "aside", "details", "summary", "figure",
        "figcaption", "time", "var"}
# any other element is dropped and its text kept (as text): <html>, <head> and <body> are
# written by ``sanitize`` itself; images and links to styles have no place in a report page
ATTRS = {"id", "class", "href", "title", "colspan", "rowspan", "scope", "role", "hidden",
         "type", "name", "checked", "autocomplete", "for", "lang", "dir", "abbr", "headers"}
ATTR_PREFIXES = ("aria-", "data-")
# GX's collapsible blocks get a random id (only there: a value that looks like a UUID is kept)
UUID = re.compile(r"(?<=-collapse-body-)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                  r"[0-9a-f]{12}")


def esc(value: object) -> str:
    """A value as HTML text or a quoted attribute value (both quote kinds escaped)."""
    return html.escape(str(value), quote=True)


class _Sanitizer(HTMLParser):
    def __init__(self, href: Callable[[str], str | None],
                 attrs: Callable[[str, dict[str, str]], dict[str, str]] | None) -> None:
        super().__init__(convert_charrefs=True)
        self.href, self.rewrite = href, attrs
        self.out: list[str] = []
        self.skip: list[str] = []  # the open elements being dropped with their content
        self.anchors: list[bool] = []  # for each open <a>: was it kept?

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skip:
            if tag == self.skip[-1] and tag not in VOID:
                self.skip.append(tag)
            return
        if tag in DROP_WITH_CONTENT:
            self.skip.append(tag)
            return
        if tag not in KEEP:
            return  # unknown or unwanted: dropped, its text kept (as text)
        kept = {k: v or "" for k, v in attrs}
        if self.rewrite is not None:
            kept = self.rewrite(tag, kept)
        clean: dict[str, str] = {}
        for k, v in kept.items():
            if k == "href":
                target = self.href(v)
                if target is not None:
                    clean[k] = target
            elif k in ATTRS or k.startswith(ATTR_PREFIXES):
                clean[k] = v
        if tag == "a":
            self.anchors.append("href" in clean or "id" in clean)
            if not self.anchors[-1]:
                return
        rendered = "".join(f' {k}="{esc(v)}"' for k, v in clean.items())
        self.out.append(f"<{tag}{rendered}>")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.skip:
            if tag == self.skip[-1]:
                self.skip.pop()
            return
        if tag not in KEEP or tag in VOID:
            return
        if tag == "a" and (not self.anchors or not self.anchors.pop()):
            return  # the end of a link that was dropped (its text was kept)
        self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(html.escape(data, quote=False))


def sanitize(document: str, *, title: str, head: str = "", body_prefix: str = "",
             href: Callable[[str], str | None] = lambda h: h if h.startswith("#") else None,
             attrs: Callable[[str, dict[str, str]], dict[str, str]] | None = None) -> str:
    """Re-serialise ``document``'s body through the allowlist, inside a new head.

    ``href`` maps each link target to a kept one (None drops the link, keeping its text);
    ``attrs`` may rewrite an element's attributes before the allowlist applies (to turn an
    inline handler the report needs into a ``data-`` attribute its script file reads).
    Comments, doctype and processing instructions are dropped; GX's random element ids are
    numbered in order, so the same results give the same bytes.
    """
    match = re.search(r"<body[^>]*>(.*)</body>", document, re.S | re.I)
    body = match[1] if match else document
    numbers: dict[str, str] = {}
    body = UUID.sub(lambda m: numbers.setdefault(m[0], f"c{len(numbers) + 1}"), body)
    parser = _Sanitizer(href, attrs)
    parser.feed(body)
    parser.close()
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{CSP_META}"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title>{head}</head><body>{body_prefix}"
            f"{''.join(parser.out)}</body></html>")
