"""Static files of the search page (package data: index.html, app.js, style.css)."""
