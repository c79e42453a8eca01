"""The HTML of bookinfo's productpage, rendered from what details and reviews returned (pure).
Like Istio's page it shows the book, its details, the reviews with their stars, and which reviews
pod (and version) answered; an upstream that failed shows its error in place of its section."""
from __future__ import annotations

from html import escape
from typing import Any

from .upstream import Fetched

STYLE = """body{font-family:sans-serif;margin:2em}h1{margin-bottom:.2em}.error{color:#a00}
.stars{font-size:1.3em}.review{border-left:3px solid #ccc;padding-left:1em;margin:1em 0}
.served{color:#555;font-size:.9em}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}"""

DETAIL_FIELDS = (("Type", "type"), ("Pages", "pages"), ("Publisher", "publisher"), ("Language", "language"),
                 ("ISBN-10", "ISBN-10"), ("ISBN-13", "ISBN-13"))


def render_index() -> str:
    return _page("Simple Bookstore App", "<h1>Hello! This is a simple bookstore application consisting of "
                 "four services.</h1><p><a href=\"/productpage?u=normal\">Normal user</a> | "
                 "<a href=\"/productpage?u=test\">Test user</a></p>")


def render_productpage(product: dict[str, Any], details: Fetched, reviews: Fetched, user: str | None,
                       details_error: str, reviews_error: str) -> str:
    login = (f"<p>Signed in as <b>{escape(user)}</b> &middot; <a href=\"/logout\">sign out</a></p>" if user else
             "<form method=\"post\" action=\"/login\"><input name=\"username\" placeholder=\"user\">"
             "<input name=\"passwd\" type=\"password\" placeholder=\"password\"><button>Sign in</button></form>")
    body = (f"{login}<h1>{escape(product['title'])}</h1><p>{product['descriptionHtml']}</p>"
            f"{render_details(details, details_error)}{render_reviews(reviews, reviews_error)}")
    return _page("Simple Bookstore App", body)


def render_details(details: Fetched, error: str) -> str:
    if not details.ok or not isinstance(details.body, dict):
        return _error_section("Book Details", error, details)
    rows = "".join(f"<dt>{name}</dt><dd>{escape(str(details.body.get(key, '')))}</dd>"
                   for name, key in DETAIL_FIELDS)
    return f"<section id=\"details\"><h2>Book Details</h2><dl>{rows}</dl></section>"


def render_reviews(reviews: Fetched, error: str) -> str:
    if not reviews.ok or not isinstance(reviews.body, dict):
        return _error_section("Book Reviews", error, reviews)
    items = "".join(render_review(r) for r in reviews.body.get("reviews", []))
    pod = escape(str(reviews.body.get("podname", "")))
    version = escape(str(reviews.body.get("version", "")))
    cluster = escape(str(reviews.body.get("clustername", "")))
    return (f"<section id=\"reviews\"><h2>Book Reviews</h2>{items}"
            f"<p class=\"served\">Reviews served by: <b id=\"reviews-pod\">{pod}</b> "
            f"(version <b id=\"reviews-version\">{version}</b>, cluster {cluster})</p></section>")


def render_review(review: dict[str, Any]) -> str:
    quote, reviewer = escape(str(review.get("text", ""))), escape(str(review.get("reviewer", "")))
    text = f"<blockquote><p>{quote}</p><small>{reviewer}</small></blockquote>"
    rating = review.get("rating")
    if isinstance(rating, dict) and "stars" in rating:
        color = escape(str(rating.get("color", "black")))
        stars = int(rating["stars"])
        text += (f"<div class=\"stars\" data-stars=\"{stars}\" style=\"color:{color}\">"
                 f"{'&#9733;' * stars}{'&#9734;' * (5 - stars)}</div>")
    elif isinstance(rating, dict) and "error" in rating:
        text += f"<p class=\"error\">{escape(str(rating['error']))}</p>"
    return f"<div class=\"review\">{text}</div>"


def _error_section(title: str, error: str, fetched: Fetched) -> str:
    why = fetched.error or f"HTTP {fetched.status}"
    return (f"<section class=\"error\"><h2>Error fetching product {title.split()[-1].lower()}</h2>"
            f"<p>{escape(error)}</p><p><small>{escape(fetched.url)}: {escape(why)}</small></p></section>")


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")
