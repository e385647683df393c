"""The dashboard's pages, one per file, each a short ``main()`` of layout over the widgets and
view models of ``app`` (``app/main.py`` lists them; nothing imports a page)."""
