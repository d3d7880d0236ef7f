//! Diesel table definitions, written by hand to match `migrations/sqlite` and
//! `migrations/postgres` (both dialects share these portable types).

diesel::table! {
    users (id) {
        id -> Text,
        username -> Text,
        password_hash -> Text,
        created_at -> BigInt,
        username_key -> Nullable<Text>,
        deleted_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    devices (user_id, device_id) {
        user_id -> Text,
        device_id -> Text,
        created_at -> BigInt,
        last_seen_at -> BigInt,
    }
}

diesel::table! {
    sessions (token_hash) {
        token_hash -> Binary,
        user_id -> Text,
        device_id -> Nullable<Text>,
        created_at -> BigInt,
        expires_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    invites (from_user, to_user) {
        from_user -> Text,
        to_user -> Text,
        status -> Text,
        created_at -> BigInt,
        delivered_at -> Nullable<BigInt>,
        responded_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    contacts (user_id, contact_id) {
        user_id -> Text,
        contact_id -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    pending_messages (id) {
        id -> BigInt,
        user_id -> Text,
        frame -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    user_logs (username) {
        username -> Text,
        last_offset -> BigInt,
        received_offset -> BigInt,
        read_offset -> BigInt,
    }
}

diesel::table! {
    conversations (user_a, user_b) {
        user_a -> Text,
        user_b -> Text,
        last_user_offset -> BigInt,
        a_received -> BigInt,
        a_read -> BigInt,
        b_received -> BigInt,
        b_read -> BigInt,
    }
}

diesel::table! {
    messages (sender, client_id) {
        sender -> Text,
        client_id -> Text,
        sender_device -> Nullable<Text>,
        receiver -> Text,
        user_offset -> BigInt,
        sender_offset -> BigInt,
        receiver_offset -> BigInt,
        sent_at -> BigInt,
        stored_at -> BigInt,
        payload -> Binary,
        encryption_type -> Text,
        encrypted -> Text,
        signature -> Text,
    }
}

diesel::table! {
    device_cursors (username, device_id) {
        username -> Text,
        device_id -> Text,
        acked_offset -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    key_registrations (username, device_id) {
        username -> Text,
        device_id -> BigInt,
        registration_id -> BigInt,
        signed_pre_key -> Binary,
        registered_at -> BigInt,
    }
}

diesel::table! {
    one_time_prekeys (id) {
        id -> BigInt,
        username -> Text,
        device_id -> BigInt,
        pre_key -> Binary,
    }
}

diesel::table! {
    sealed_messages (receiver, receiver_offset) {
        receiver -> Text,
        receiver_offset -> BigInt,
        device_id -> BigInt,
        body -> Binary,
        stored_at -> BigInt,
    }
}

diesel::table! {
    key_challenges (nonce) {
        nonce -> Binary,
        username -> Text,
        expires_at -> BigInt,
    }
}

diesel::joinable!(devices -> users (user_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(pending_messages -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    devices,
    sessions,
    invites,
    contacts,
    pending_messages,
    user_logs,
    conversations,
    messages,
    device_cursors,
    key_registrations,
    one_time_prekeys,
    sealed_messages,
    key_challenges,
);
