"""`python -m meshway.apps.bookinfo`: stand-ins for the four services of Istio's bookinfo sample,
with the same HTTP APIs, chosen by BOOKINFO_SERVICE (productpage|details|reviews|ratings) and
BOOKINFO_VERSION (v1, v2, v3) on HOST:PORT (default 0.0.0.0:9080).

productpage calls details and reviews (and ratings for its API); reviews v2 and v3 call ratings
and colour the stars black and red. Upstreams are `http://<service>:9080` (the pod's /etc/hosts
names the service VIPs), or BOOKINFO_<SERVICE>_URL, or Istio's <SERVICE>_HOSTNAME /
<SERVICE>_SERVICE_PORT / SERVICES_DOMAIN settings."""
from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from . import bookinfo_page
from .server import Handler, Request, Response, html_response, json_response, listen_address, serve
from .upstream import Fetched, build_forward_headers, fetch_json

SERVICES = ("productpage", "details", "reviews", "ratings")
PRODUCT = {
    "id": 0, "title": "The Comedy of Errors",
    "descriptionHtml": "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: "
                       "The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest "
                       "and one of his most farcical comedies, with a major part of the humour coming from "
                       "slapstick and mistaken identity, in addition to puns and word play.",
}
REVIEWS = (
    ("Reviewer1", "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"),
    ("Reviewer2", "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays "
                  "by Shakespeare."),
)
RATINGS = {"Reviewer1": 5, "Reviewer2": 4}
STAR_COLORS = {"v2": "black", "v3": "red"}
ERRORS = {
    "details": "Sorry, product details are currently unavailable for this book.",
    "reviews": "Sorry, product reviews are currently unavailable for this book.",
    "ratings": "Sorry, product ratings are currently unavailable for this book.",
    "rating": "Ratings service is currently unavailable",
}
# Istio's timeouts: productpage 3 s (reviews tried twice); reviews -> ratings 10 s (v2) / 2.5 s (v3)
PRODUCTPAGE_TIMEOUT = 3.0
RATINGS_TIMEOUTS = {"black": 10.0, "red": 2.5}
ID_PATH = re.compile(r"/(details|ratings|reviews)/([^/]+)")
API_PATH = re.compile(r"/api/v1/products/([^/]+)(?:/(reviews|ratings))?")


@dataclass(frozen=True)
class Settings:
    service: str
    version: str
    pod: str
    cluster: str
    details_url: str
    reviews_url: str
    ratings_url: str
    ratings_enabled: bool
    star_color: str


def build_upstream_url(env: Mapping[str, str], service: str) -> str:
    if url := env.get(f"BOOKINFO_{service.upper()}_URL"):
        return url.rstrip("/")
    host = env.get(f"{service.upper()}_HOSTNAME") or service
    if domain := env.get("SERVICES_DOMAIN"):
        host = f"{host}.{domain}"
    return f"http://{host}:{env.get(f'{service.upper()}_SERVICE_PORT') or 9080}"


def build_settings(env: Mapping[str, str]) -> Settings:
    service = env.get("BOOKINFO_SERVICE", "")
    if service not in SERVICES:
        raise ValueError(f"BOOKINFO_SERVICE must be one of {', '.join(SERVICES)}, got {service!r}")
    version = env.get("BOOKINFO_VERSION") or env.get("SERVICE_VERSION") or "v1"
    enabled = env.get("ENABLE_RATINGS", str(version in STAR_COLORS)).lower() == "true"
    return Settings(
        service=service, version=version, pod=env.get("POD_NAME") or env.get("HOSTNAME", ""),
        cluster=env.get("CLUSTER_NAME", "null"), details_url=build_upstream_url(env, "details"),
        reviews_url=build_upstream_url(env, "reviews"), ratings_url=build_upstream_url(env, "ratings"),
        ratings_enabled=enabled, star_color=env.get("STAR_COLOR") or STAR_COLORS.get(version, "black"))


def parse_id(text: str) -> int | None:
    return int(text) if re.fullmatch(r"-?\d+", text) else None


# -- details, ratings, reviews: pure bodies --------------------------------------------------
def build_details(product_id: int) -> dict[str, object]:
    return {"id": product_id, "author": "William Shakespeare", "year": 1595, "type": "paperback", "pages": 200,
            "publisher": "PublisherA", "language": "English", "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"}


def build_ratings(product_id: int) -> dict[str, object]:
    return {"id": product_id, "ratings": dict(RATINGS)}


def build_reviews(product_id: str, settings: Settings, ratings: Fetched | None) -> dict[str, object]:
    """Istio's reviews JSON; `ratings` is None for v1 (ratings disabled)."""
    reviews = []
    for reviewer, text in REVIEWS:
        review: dict[str, object] = {"reviewer": reviewer, "text": text}
        if ratings is not None:
            stars = ratings.body.get("ratings", {}).get(reviewer) if ratings.ok and isinstance(ratings.body, dict) \
                else None
            review["rating"] = ({"stars": stars, "color": settings.star_color} if stars is not None
                                else {"error": ERRORS["rating"]})
        reviews.append(review)
    return {"id": product_id, "podname": settings.pod, "clustername": settings.cluster,
            "version": settings.version, "reviews": reviews}


# -- handlers -------------------------------------------------------------------------------
def not_found(req: Request) -> Response:
    return json_response(404, {"error": f"not found: {req.method} {req.path}"})


def make_details(settings: Settings) -> Handler:
    async def handle(req: Request) -> Response:
        if req.path == "/health":
            return json_response(200, {"status": "Details is healthy"})
        if (m := ID_PATH.fullmatch(req.path)) and m.group(1) == "details":
            pid = parse_id(m.group(2))
            if pid is None:
                return json_response(400, {"error": "please provide numeric product id"})
            return json_response(200, build_details(pid))
        return not_found(req)
    return handle


def make_ratings(settings: Settings) -> Handler:
    async def handle(req: Request) -> Response:
        if req.path == "/health":
            return json_response(200, {"status": "Ratings is healthy"})
        if (m := ID_PATH.fullmatch(req.path)) and m.group(1) == "ratings":
            pid = parse_id(m.group(2))
            if pid is None:
                return json_response(400, {"error": "please provide numeric product ID"})
            return json_response(200, build_ratings(pid))
        return not_found(req)
    return handle


def make_reviews(settings: Settings) -> Handler:
    timeout = RATINGS_TIMEOUTS.get(settings.star_color, 2.5)

    async def handle(req: Request) -> Response:
        if req.path == "/health":
            return json_response(200, {"status": "Reviews is healthy"})
        if (m := ID_PATH.fullmatch(req.path)) and m.group(1) == "reviews":
            ratings = None
            if settings.ratings_enabled:
                url = f"{settings.ratings_url}/ratings/{m.group(2)}"
                ratings = await fetch_json(url, build_forward_headers(req), timeout)
            return json_response(200, build_reviews(m.group(2), settings, ratings))
        return not_found(req)
    return handle


# -- productpage ----------------------------------------------------------------------------
def find_user(req: Request) -> str | None:
    cookie = SimpleCookie()
    try:
        cookie.load(req.header("cookie") or "")
    except Exception:  # a malformed cookie header is no login
        return None
    return cookie["user"].value if "user" in cookie and cookie["user"].value else None


def build_upstream_headers(req: Request) -> dict[str, str]:
    user = find_user(req)
    return build_forward_headers(req, {"end-user": user} if user else None)


async def fetch_reviews(settings: Settings, product_id: str, headers: dict[str, str]) -> Fetched:
    url = f"{settings.reviews_url}/reviews/{product_id}"
    fetched = await fetch_json(url, headers, PRODUCTPAGE_TIMEOUT)
    return fetched if fetched.ok else await fetch_json(url, headers, PRODUCTPAGE_TIMEOUT)


def api_result(fetched: Fetched, error_key: str) -> Response:
    if fetched.ok:
        return json_response(200, fetched.body)
    return json_response(fetched.status or 500, {"error": ERRORS[error_key]})


def login_response(req: Request) -> Response:
    form = parse_qs(req.body.decode(errors="replace"))
    user = (form.get("username") or [""])[0]
    cookie = f"user={user}; Path=/" if user else "user=; Path=/; Max-Age=0"
    return Response(302, b"", "text/plain", (("Location", "/productpage"), ("Set-Cookie", cookie)))


def make_productpage(settings: Settings) -> Handler:
    async def api(req: Request, product: str, sub: str | None) -> Response:
        headers = build_upstream_headers(req)
        if sub == "reviews":
            return api_result(await fetch_reviews(settings, product, headers), "reviews")
        if sub == "ratings":
            url = f"{settings.ratings_url}/ratings/{product}"
            return api_result(await fetch_json(url, headers, PRODUCTPAGE_TIMEOUT), "ratings")
        url = f"{settings.details_url}/details/{product}"
        return api_result(await fetch_json(url, headers, PRODUCTPAGE_TIMEOUT), "details")

    async def page(req: Request) -> Response:
        headers = build_upstream_headers(req)
        details, reviews = await asyncio.gather(
            fetch_json(f"{settings.details_url}/details/{PRODUCT['id']}", headers, PRODUCTPAGE_TIMEOUT),
            fetch_reviews(settings, str(PRODUCT["id"]), headers))
        return html_response(200, bookinfo_page.render_productpage(
            PRODUCT, details, reviews, find_user(req), ERRORS["details"], ERRORS["reviews"]))

    async def handle(req: Request) -> Response:
        if req.path == "/health":
            return json_response(200, {"status": "Product page is healthy"})
        if req.path in ("/", "/index.html"):
            return html_response(200, bookinfo_page.render_index())
        if req.path == "/productpage":
            return await page(req)
        if req.path == "/login" and req.method == "POST":
            return login_response(req)
        if req.path == "/logout":
            return Response(302, b"", "text/plain", (("Location", "/productpage"),
                                                     ("Set-Cookie", "user=; Path=/; Max-Age=0")))
        if req.path == "/api/v1/products":
            return json_response(200, [PRODUCT])
        if m := API_PATH.fullmatch(req.path):
            return await api(req, m.group(1), m.group(2))
        return not_found(req)
    return handle


HANDLERS = {"productpage": make_productpage, "details": make_details, "reviews": make_reviews,
            "ratings": make_ratings}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = build_settings(os.environ)
    except ValueError as exc:
        sys.exit(f"bookinfo: {exc}")
    host, port = listen_address(os.environ, 9080, argv)
    name = f"bookinfo {settings.service} {settings.version}"
    asyncio.run(serve(HANDLERS[settings.service](settings), host, port, name))


if __name__ == "__main__":
    main()
