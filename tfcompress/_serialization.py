"""One registration decorator for every serializable tfcompress object.

Registering under the fixed package name "tfcompress" lets a saved `.keras`
file reload after `import tfcompress` alone: no `custom_objects`, no scopes.
Registered names must never change once released.
"""

import keras

register = keras.saving.register_keras_serializable(package="tfcompress")
