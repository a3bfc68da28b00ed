"""The built-in plugins of cat-framework, written exactly as a third party would write them.

Each subpackage is one plugin module registered by the plugin manager before any entry point.
Components are registered as lazy ``"module:Class"`` strings so listing plugins imports nothing
heavy; a component's module is imported when a pipeline uses it.
"""
