//! The task store's code shared by both backends, written once and
//! instantiated per sqlx driver by [`task_store_backend!`]: sqlx's query
//! and connection types differ per database, and spelling the encode
//! bounds of a generic version out would be longer than the code. The SQL
//! itself is shared too (`sql.rs`); a backend brings its store type, its
//! open/migrate code and the statements that differ.

/// Defines, in the invoking module, the connection-level writes an audit
/// record can carry (`write`, used by `AuditLog::append_with`) and
/// `impl TaskStore for $store`. The invoking module provides:
/// - `$store` with fields `pool` (a pool of `$db`) and an inherent
///   `async fn write_lock(&self)` whose result is held across each write;
/// - `LIST_TASKS_SQL` (the metadata filter is backend-specific);
/// - `fn shares_database(&self, &AuditLog) -> bool` on `$store`.
macro_rules! task_store_backend {
    ($store:ident, $db:ty) => {
        type Conn = <$db as sqlx::Database>::Connection;
        type Q<'q> = sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>;

        /// Binds the 24 columns of `task_columns!` of `task`, in order.
        fn bind_task<'q>(q: Q<'q>, task: &'q TaskRecord, empty: &'q TaskResult) -> Q<'q> {
            let q = q
                .bind(task.id.to_string())
                .bind(task.kind.as_str())
                .bind(task.state.as_str())
                .bind(&task.tenant)
                .bind(&task.principal)
                .bind(&task.command)
                .bind(list_to_json(&task.args))
                .bind(task.profile.as_deref())
                .bind(to_ms(task.created_at))
                .bind(task.started_at.map(to_ms))
                .bind(task.completed_at.map(to_ms))
                .bind(map_to_json(&task.metadata));
            bind_result(q, task.result.as_ref(), empty)
                .bind(task.failure_reason.as_deref())
                .bind(&task.owner)
        }

        /// Binds the 10 outcome columns, `exit_code` (null without a result)
        /// through `execution_time_ms`, of `result`.
        fn bind_result<'q>(
            q: Q<'q>,
            result: Option<&'q TaskResult>,
            empty: &'q TaskResult,
        ) -> Q<'q> {
            let r = result.unwrap_or(empty);
            q.bind(result.map(|r| r.exit_code))
                .bind(r.stdout.as_slice())
                .bind(r.stderr.as_slice())
                .bind(r.stdout_truncated)
                .bind(r.stderr_truncated)
                .bind(to_i64(r.usage.cpu_time_ms))
                .bind(to_i64(r.usage.max_memory_kb))
                .bind(to_i64(r.usage.io_read_bytes))
                .bind(to_i64(r.usage.io_write_bytes))
                .bind(to_i64(r.execution_time_ms))
        }

        /// The error of a task insert: a second task with the same id is
        /// [`StoreError::DuplicateTask`].
        fn insert_error(err: sqlx::Error, id: TaskId) -> StoreError {
            if err
                .as_database_error()
                .is_some_and(|db| db.is_unique_violation())
            {
                StoreError::DuplicateTask { id }
            } else {
                err.into()
            }
        }

        /// The state of task `id` as `conn` sees it (inside its transaction, if any).
        async fn current_state(
            conn: &mut Conn,
            id: TaskId,
        ) -> Result<Option<TaskState>, StoreError> {
            let raw: Option<String> = sqlx::query_scalar(crate::sql::CURRENT_STATE_SQL)
                .bind(id.to_string())
                .fetch_optional(&mut *conn)
                .await?;
            raw.map(|s| {
                s.parse::<TaskState>()
                    .map_err(|reason| StoreError::Corrupt {
                        id: id.to_string(),
                        reason,
                    })
            })
            .transpose()
        }

        /// Explains why a guarded update of task `id` touched no row.
        async fn refused_on(conn: &mut Conn, id: TaskId, to: TaskState) -> StoreError {
            match current_state(conn, id).await {
                Ok(Some(from)) => StoreError::InvalidTransition { id, from, to },
                Ok(None) => StoreError::NotFound { id },
                Err(err) => err,
            }
        }

        /// The task store's writes that an audit record can carry in its own
        /// transaction (see [`crate::AuditLog::append_with`]); [`TaskStore::apply`]
        /// and the [`TaskStore`] methods of the same names run them on their own.
        pub(crate) async fn write(conn: &mut Conn, w: &StoreWrite) -> Result<(), StoreError> {
            match w {
                StoreWrite::Decision { record, details } => {
                    insert_decision(conn, record, details).await
                }
                StoreWrite::InsertTask(task) => insert_task(conn, task).await,
                StoreWrite::InsertPending { task, approval } => {
                    insert_pending(conn, task, approval).await
                }
                StoreWrite::Finish {
                    id,
                    state,
                    completed_at,
                    result,
                    failure_reason,
                } => {
                    finish(
                        conn,
                        *id,
                        *state,
                        *completed_at,
                        result.as_deref(),
                        failure_reason.as_deref(),
                    )
                    .await
                }
            }
        }

        async fn insert_task(conn: &mut Conn, task: &TaskRecord) -> Result<(), StoreError> {
            let empty = TaskResult::default();
            let done = bind_task(sqlx::query(crate::sql::INSERT_TASK_SQL), task, &empty)
                .execute(&mut *conn)
                .await;
            done.map(|_| ()).map_err(|err| insert_error(err, task.id))
        }

        async fn set_state(
            conn: &mut Conn,
            id: TaskId,
            state: TaskState,
            at: OffsetDateTime,
        ) -> Result<(), StoreError> {
            let Some(target_rank) = crate::sql::rank(state) else {
                // Terminal states carry an outcome: they go through `finish`.
                return Err(refused_on(conn, id, state).await);
            };
            let done = sqlx::query(crate::sql::SET_STATE_SQL)
                .bind(state.as_str())
                .bind(to_ms(at))
                .bind(id.to_string())
                .bind(target_rank)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(refused_on(conn, id, state).await);
            }
            Ok(())
        }

        async fn finish(
            conn: &mut Conn,
            id: TaskId,
            state: TaskState,
            completed_at: OffsetDateTime,
            result: Option<&TaskResult>,
            failure_reason: Option<&str>,
        ) -> Result<(), StoreError> {
            if !state.is_terminal() {
                return Err(refused_on(conn, id, state).await);
            }
            let empty = TaskResult::default();
            let q = sqlx::query(crate::sql::FINISH_SQL)
                .bind(state.as_str())
                .bind(to_ms(completed_at));
            let done = bind_result(q, result, &empty)
                .bind(failure_reason)
                .bind(id.to_string())
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(refused_on(conn, id, state).await);
            }
            Ok(())
        }

        async fn insert_decision(
            conn: &mut Conn,
            rec: &DecisionRecord,
            details: &DecisionDetails,
        ) -> Result<(), StoreError> {
            // A JSON value always serialises; the fallbacks keep this panic-free.
            let input = details
                .input
                .as_ref()
                .map(|v| serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned()));
            // Typed up to here; JSON only in the row. Through a `Value`,
            // whose object keys are sorted, so the stored text is what it
            // always was.
            let obligations = serde_json::to_value(&details.obligations)
                .map(|v| v.to_string())
                .unwrap_or_else(|_| "{}".to_owned());
            sqlx::query(crate::sql::INSERT_DECISION_SQL)
                .bind(rec.id.hyphenated().to_string())
                .bind(to_ms(rec.at))
                .bind(&rec.tenant)
                .bind(&rec.principal)
                .bind(&rec.kind)
                .bind(&rec.summary)
                .bind(rec.allow)
                .bind(list_to_json(&rec.deny_reasons))
                .bind(&rec.policy_revision)
                .bind(rec.task_id.map(|t| t.to_string()))
                .bind(input)
                .bind(to_i64(details.latency_us))
                .bind(details.profile.as_deref())
                .bind(obligations)
                .bind(list_to_json(&details.warnings))
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        async fn insert_pending(
            conn: &mut Conn,
            task: &TaskRecord,
            approval: &PendingApproval,
        ) -> Result<(), StoreError> {
            if task.state != TaskState::PendingApproval {
                return Err(StoreError::InvalidTransition {
                    id: task.id,
                    from: task.state,
                    to: TaskState::PendingApproval,
                });
            }
            let empty = TaskResult::default();
            let details =
                serde_json::to_string(&approval.details).unwrap_or_else(|_| "null".to_owned());
            let done = bind_task(sqlx::query(crate::sql::INSERT_PENDING_SQL), task, &empty)
                .bind(details)
                .bind(to_ms(approval.expires_at))
                .execute(&mut *conn)
                .await;
            done.map(|_| ()).map_err(|err| insert_error(err, task.id))
        }

        #[async_trait::async_trait]
        impl TaskStore for $store {
            async fn apply(&self, w: &StoreWrite) -> Result<(), StoreError> {
                let _write = self.write_lock().await;
                write(&mut *self.pool.acquire().await?, w).await
            }

            fn shares_database(&self, audit: &crate::AuditLog) -> bool {
                $store::shares_database(self, audit)
            }

            #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %task.id))]
            async fn insert_task(&self, task: &TaskRecord) -> Result<(), StoreError> {
                let _write = self.write_lock().await;
                insert_task(&mut *self.pool.acquire().await?, task).await
            }

            #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %id, state = state.as_str()))]
            async fn set_state(
                &self,
                id: TaskId,
                state: TaskState,
                at: OffsetDateTime,
            ) -> Result<(), StoreError> {
                let _write = self.write_lock().await;
                set_state(&mut *self.pool.acquire().await?, id, state, at).await
            }

            #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %id, state = state.as_str()))]
            async fn finish(
                &self,
                id: TaskId,
                state: TaskState,
                completed_at: OffsetDateTime,
                result: Option<&TaskResult>,
                failure_reason: Option<&str>,
            ) -> Result<(), StoreError> {
                let _write = self.write_lock().await;
                let mut conn = self.pool.acquire().await?;
                finish(&mut conn, id, state, completed_at, result, failure_reason).await
            }

            #[tracing::instrument(name = "store.read", skip_all, fields(task_id = %id))]
            async fn get_task(
                &self,
                tenant: &str,
                id: TaskId,
            ) -> Result<Option<TaskRecord>, StoreError> {
                let row: Option<TaskRow> = sqlx::query_as(crate::sql::GET_TASK_SQL)
                    .bind(id.to_string())
                    .bind(tenant)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(TaskRecord::try_from).transpose()
            }

            async fn record_decision(&self, rec: &DecisionRecord) -> Result<(), StoreError> {
                self.record_decision_with(rec, &DecisionDetails::default())
                    .await
            }

            #[tracing::instrument(name = "store.write", skip_all, fields(decision_id = %rec.id))]
            async fn record_decision_with(
                &self,
                rec: &DecisionRecord,
                details: &DecisionDetails,
            ) -> Result<(), StoreError> {
                let _write = self.write_lock().await;
                insert_decision(&mut *self.pool.acquire().await?, rec, details).await
            }

            #[tracing::instrument(name = "store.read", skip_all)]
            async fn list_decisions(
                &self,
                query: &DecisionQuery,
            ) -> Result<Vec<DecisionLogEntry>, StoreError> {
                let rows: Vec<DecisionLogRow> = sqlx::query_as(crate::sql::LIST_DECISIONS_SQL)
                    .bind(query.since.map(to_ms))
                    .bind(query.tenant.as_deref())
                    .bind(query.with_input)
                    .bind(query.after.map(|(at, _)| to_ms(at)))
                    .bind(query.after.map(|(_, id)| id.hyphenated().to_string()))
                    .bind(i64::from(query.limit.min(MAX_PAGE)))
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(DecisionLogEntry::try_from).collect()
            }

            #[tracing::instrument(name = "store.read", skip_all, fields(decision_id = %id))]
            async fn get_decision(&self, id: Uuid) -> Result<Option<DecisionRecord>, StoreError> {
                let row: Option<DecisionRow> = sqlx::query_as(crate::sql::GET_DECISION_SQL)
                    .bind(id.hyphenated().to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(DecisionRecord::try_from).transpose()
            }

            #[tracing::instrument(name = "store.write", skip_all, fields(owner = %owner))]
            async fn mark_interrupted(
                &self,
                owner: &str,
                at: OffsetDateTime,
            ) -> Result<u64, StoreError> {
                let _write = self.write_lock().await;
                let done = sqlx::query(crate::sql::INTERRUPT_SQL)
                    .bind(crate::INTERRUPTED)
                    .bind(to_ms(at))
                    .bind(owner)
                    .execute(&self.pool)
                    .await?;
                let count = done.rows_affected();
                if count > 0 {
                    tracing::warn!(count, owner, "marked interrupted tasks as failed");
                }
                Ok(count)
            }

            #[tracing::instrument(name = "store.read", skip_all, fields(tenant = %query.tenant))]
            async fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
                let rows: Vec<TaskRow> = sqlx::query_as(LIST_TASKS_SQL)
                    .bind(&query.tenant)
                    .bind(query.state.map(|s| s.as_str()))
                    .bind(query.since.map(to_ms))
                    .bind(query.until.map(to_ms))
                    .bind(query.before.map(|id| id.to_string()))
                    .bind(i64::from(query.limit.clamp(1, MAX_TASK_PAGE)))
                    .bind(map_to_json(&query.metadata))
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(TaskRecord::try_from).collect()
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %task.id))]
            async fn insert_pending(
                &self,
                task: &TaskRecord,
                approval: &PendingApproval,
            ) -> Result<(), StoreError> {
                let _write = self.write_lock().await;
                insert_pending(&mut *self.pool.acquire().await?, task, approval).await
            }

            #[tracing::instrument(name = "store.read", skip_all, fields(task_id = %id))]
            async fn get_approval(
                &self,
                tenant: &str,
                id: TaskId,
            ) -> Result<Option<PendingApproval>, StoreError> {
                let row: Option<(Option<String>, Option<i64>, Option<String>)> =
                    sqlx::query_as(crate::sql::GET_APPROVAL_SQL)
                        .bind(id.to_string())
                        .bind(tenant)
                        .fetch_optional(&self.pool)
                        .await?;
                let Some((Some(raw), Some(expires), decided_by)) = row else {
                    return Ok(None);
                };
                let details = serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt {
                    id: id.to_string(),
                    reason: format!("approval: {e}"),
                })?;
                Ok(Some(PendingApproval {
                    details,
                    expires_at: from_ms(&id.to_string(), "approval_expires_at", expires)?,
                    decided_by,
                }))
            }

            #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %id))]
            async fn claim_pending(
                &self,
                tenant: &str,
                id: TaskId,
                owner: &str,
                decided_by: &str,
                at: OffsetDateTime,
            ) -> Result<bool, StoreError> {
                let _write = self.write_lock().await;
                let done = sqlx::query(crate::sql::CLAIM_PENDING_SQL)
                    .bind(owner)
                    .bind(decided_by)
                    .bind(id.to_string())
                    .bind(tenant)
                    .bind(to_ms(at))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %id, state = state.as_str()))]
            async fn finish_pending(
                &self,
                tenant: &str,
                id: TaskId,
                state: TaskState,
                at: OffsetDateTime,
                reason: &str,
                decided_by: Option<&str>,
            ) -> Result<bool, StoreError> {
                let _write = self.write_lock().await;
                if !state.is_terminal() {
                    return Err(StoreError::InvalidTransition {
                        id,
                        from: TaskState::PendingApproval,
                        to: state,
                    });
                }
                let done = sqlx::query(crate::sql::FINISH_PENDING_SQL)
                    .bind(state.as_str())
                    .bind(to_ms(at))
                    .bind(reason)
                    .bind(decided_by)
                    .bind(id.to_string())
                    .bind(tenant)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            #[tracing::instrument(name = "store.write", skip_all)]
            async fn expire_pending(&self, at: OffsetDateTime) -> Result<u64, StoreError> {
                let _write = self.write_lock().await;
                let done = sqlx::query(crate::sql::EXPIRE_PENDING_SQL)
                    .bind(to_ms(at))
                    .bind(crate::APPROVAL_EXPIRED)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %task))]
            async fn use_token(
                &self,
                jti: &str,
                task: TaskId,
                at: OffsetDateTime,
                expires_at: OffsetDateTime,
            ) -> Result<bool, StoreError> {
                let _write = self.write_lock().await;
                let done = sqlx::query(crate::sql::USE_TOKEN_SQL)
                    .bind(jti)
                    .bind(task.to_string())
                    .bind(to_ms(at))
                    .bind(to_ms(expires_at))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %key.task_id))]
            async fn claim_idempotency_key(
                &self,
                key: &IdempotencyKey,
                window_start: OffsetDateTime,
            ) -> Result<IdempotencyClaim, StoreError> {
                let _write = self.write_lock().await;
                // The holder read after a refused claim can be released in
                // between by another connection (or replica); the claim is
                // then tried again, at most a few times.
                for _ in 0..3 {
                    let done = sqlx::query(crate::sql::CLAIM_KEY_SQL)
                        .bind(&key.tenant)
                        .bind(&key.principal)
                        .bind(&key.key)
                        .bind(&key.request_hash)
                        .bind(key.task_id.to_string())
                        .bind(to_ms(key.at))
                        .bind(to_ms(window_start))
                        .execute(&self.pool)
                        .await?;
                    if done.rows_affected() == 1 {
                        return Ok(IdempotencyClaim::New);
                    }
                    let holder: Option<(String, String)> = sqlx::query_as(crate::sql::GET_KEY_SQL)
                        .bind(&key.tenant)
                        .bind(&key.principal)
                        .bind(&key.key)
                        .fetch_optional(&self.pool)
                        .await?;
                    let Some((request_hash, task_id)) = holder else {
                        continue;
                    };
                    let task_id =
                        task_id
                            .parse()
                            .map_err(|e: mcp_core::TaskIdError| StoreError::Corrupt {
                                id: key.key.clone(),
                                reason: format!("idempotency_keys.task_id: {e}"),
                            })?;
                    return Ok(IdempotencyClaim::Existing {
                        request_hash,
                        task_id,
                    });
                }
                Err(StoreError::Database(sqlx::Error::RowNotFound))
            }

            #[tracing::instrument(name = "store.write", skip_all, fields(task_id = %task))]
            async fn release_idempotency_key(
                &self,
                tenant: &str,
                principal: &str,
                key: &str,
                task: TaskId,
            ) -> Result<(), StoreError> {
                let _write = self.write_lock().await;
                sqlx::query(crate::sql::RELEASE_KEY_SQL)
                    .bind(tenant)
                    .bind(principal)
                    .bind(key)
                    .bind(task.to_string())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            #[tracing::instrument(name = "store.read", skip_all, fields(tenant = %tenant))]
            async fn cpu_ms_since(
                &self,
                tenant: &str,
                since: OffsetDateTime,
            ) -> Result<u64, StoreError> {
                let total: Option<i64> = sqlx::query_scalar(crate::sql::CPU_SINCE_SQL)
                    .bind(tenant)
                    .bind(to_ms(since))
                    .fetch_one(&self.pool)
                    .await?;
                Ok(u64::try_from(total.unwrap_or(0)).unwrap_or(0))
            }
        }
    };
}
pub(crate) use task_store_backend;
