"""Exports shared by the CLI and the editor: picture layouts (``layout``), GIF / MP4 writers
(``video``), pose / expression / identity sweeps (``sweeps``) and mesh files (``mesh``).

Submodules are imported on use (``from engine.export import sweeps``) so that importing the
package stays cheap.
"""
